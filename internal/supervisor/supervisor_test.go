package supervisor

import (
	"testing"
	"time"
)

func TestSmokeStartStop(t *testing.T) {
	e := newEnv(t)
	e.write("a", helperRecipe("a", "sleep", "", "SUPTEST_RECORD="+e.record))
	e.start()
	st := e.waitState("a", 10*time.Second, StateRunning)
	if st.PID == 0 {
		t.Fatal("no pid")
	}
	mode, why := e.s.CgroupMode()
	t.Logf("cgroup mode %s (%s); status %+v", mode, why, st)
}
