package acl

import "testing"

func TestCovers(t *testing.T) {
	cases := []struct {
		a, r string
		want bool
	}{
		{"components/a/#", "components/a/x", true},
		{"components/a/#", "components/a", true},
		{"components/a/#", "components/a/x/y", true},
		{"components/a/#", "components/a/#", true},
		{"components/a/#", "components/a/+/z", true},
		{"components/a/#", "components/+/x", false},
		{"components/a/#", "components/#", false},
		{"components/a/#", "#", false},
		{"components/a/#", "+/a/x", false},
		{"components/a/#", "components/b/x", false},
		{"components/a/#", "components/ab/x", false},
		{"sensors/+/temp", "sensors/1/temp", true},
		{"sensors/+/temp", "sensors/+/temp", true},
		{"sensors/+/temp", "sensors/#", false},
		{"sensors/+/temp", "sensors/1/temp/x", false},
		{"sensors/+/temp", "sensors/1", false},
		{"#", "anything/at/all", true},
		{"#", "$SYS/broker", false},
		{"+/x", "$SYS/x", false},
		{"$SYS/#", "$SYS/broker", true},
		{"a/b", "a/b", true},
		{"a/b", "a/+", false},
		{"a/b", "a/b/c", false},
		{"a/+", "a/", true},
		{"", "a", false},
	}
	for _, c := range cases {
		if got := Covers(c.a, c.r); got != c.want {
			t.Errorf("Covers(%q, %q) = %v, want %v", c.a, c.r, got, c.want)
		}
	}
}

func TestAllowedShared(t *testing.T) {
	al := []string{"components/a/#"}
	if !Allowed(al, "$share/g/components/a/x") {
		t.Error("shared subscription within namespace refused")
	}
	if Allowed(al, "$share/g/#") || Allowed(al, "$share/g") {
		t.Error("shared subscription widened access")
	}
}
