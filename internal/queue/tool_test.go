package queue

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/outpost-edge/outpost/internal/message"
)

func TestOfflineTools(t *testing.T) {
	root := t.TempDir()
	dir := filepath.Join(root, "alarms")
	q := openT(t, Config{Dir: dir, SegmentSize: minSegmentSize}, Options{})
	for i := range 300 {
		m := &message.Message{Topic: fmt.Sprintf("dev/%d/temp", i), QoS: 1, Payload: bytes.Repeat([]byte("t"), 400), Received: time.Now()}
		if _, err := q.Append(context.Background(), message.Encode(m)); err != nil {
			t.Fatal(err)
		}
	}
	for _, r := range drain(t, q, 20*time.Millisecond, false)[:100] {
		q.Ack(r.Seq)
	}
	q.Close()

	lanes, err := LaneDirs(root)
	if err != nil || len(lanes) != 1 || lanes[0] != dir {
		t.Fatalf("lanes %v %v", lanes, err)
	}
	st, err := ReadStatus(dir)
	if err != nil {
		t.Fatal(err)
	}
	if st.Depth != 200 || st.FirstSeq != 101 || st.NextSeq != 301 || st.Acked != 100 || st.Appended != 300 || st.Bytes <= 0 || st.Lane != "alarms" {
		t.Fatalf("status %+v", st)
	}
	var seqs []uint64
	err = Inspect(dir, false, 5, func(r Record) error {
		m, err := message.Decode(r.Data)
		if err != nil {
			return err
		}
		if m.Topic != fmt.Sprintf("dev/%d/temp", r.Seq-1) {
			return fmt.Errorf("seq %d topic %s", r.Seq, m.Topic)
		}
		seqs = append(seqs, r.Seq)
		return nil
	})
	if err != nil || len(seqs) != 5 || seqs[0] != 101 {
		t.Fatalf("inspect %v %v", seqs, err)
	}
	rep, err := Verify(dir)
	if err != nil || !rep.OK() || rep.Records == 0 {
		t.Fatalf("verify %+v %v", rep, err)
	}

	// Damage one record in the middle of a segment.
	files := segFiles(t, dir)
	f, _ := os.OpenFile(files[len(files)-2], os.O_RDWR, 0)
	f.WriteAt([]byte{0xff, 0xee}, segHeaderLen+3*100+40)
	f.Close()
	rep, err = Verify(dir)
	if err != nil || rep.OK() || rep.Damage[0].File != files[len(files)-2] || rep.Damage[0].Records != 1 {
		t.Fatalf("verify after damage %+v %v", rep, err)
	}
}
