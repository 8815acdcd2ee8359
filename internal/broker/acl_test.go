package broker

import "testing"

func TestMatchTopic(t *testing.T) {
	tests := []struct {
		filter, topic string
		want          bool
	}{
		{"a/b", "a/b", true}, {"a/b", "a/c", false}, {"a/+", "a/b", true}, {"a/+", "a/b/c", false},
		{"a/#", "a", true}, {"a/#", "a/b/c", true}, {"#", "a/b", true}, {"+/b", "a/b", true},
		{"#", "$SYS/x", false}, {"+/x", "$SYS/x", false}, {"$SYS/#", "$SYS/x", true},
		{"a/+/c", "a//c", true}, {"+", "", true}, {"a/b/c", "a/b", false}, {"a", "a/b", false},
	}
	for _, tt := range tests {
		if got := matchTopic(tt.filter, tt.topic); got != tt.want {
			t.Errorf("matchTopic(%q, %q) = %v, want %v", tt.filter, tt.topic, got, tt.want)
		}
	}
}

func TestIntersectsAndCovers(t *testing.T) {
	tests := []struct {
		a, b            string
		inter, aCoversB bool
	}{
		{"sensors/#", "#", true, false},
		{"sensors/#", "sensors/+/temp", true, true},
		{"sensors/+/temp", "+/+/+", true, false},
		{"sensors/a", "sensors/b", false, false},
		{"a/+", "a/b/c", false, false},
		{"a/#", "a", true, true},
		{"$SYS/#", "#", false, false},
		{"#", "$SYS/#", false, false},
		{"+/x", "a/#", true, false},
		{"a/b", "a/b", true, true},
		{"+", "a", true, true},
	}
	for _, tt := range tests {
		if got := intersects(tt.a, tt.b); got != tt.inter {
			t.Errorf("intersects(%q, %q) = %v, want %v", tt.a, tt.b, got, tt.inter)
		}
		if got := intersects(tt.b, tt.a); got != tt.inter {
			t.Errorf("intersects(%q, %q) = %v, want %v (symmetry)", tt.b, tt.a, got, tt.inter)
		}
		if got := covers(tt.a, tt.b); got != tt.aCoversB {
			t.Errorf("covers(%q, %q) = %v, want %v", tt.a, tt.b, got, tt.aCoversB)
		}
	}
}

func TestACLDecisions(t *testing.T) {
	a := compileACL([]ACLRule{
		{Topic: "sensors/secret/#", Access: AccessDeny},
		{Topic: "sensors/%c/#", Access: AccessPublish},
		{Topic: "sensors/#", Access: AccessSubscribe},
		{Topic: "users/%u/inbox", Access: AccessAll},
	})
	const user, client = "alice", "dev1"
	pub := []struct {
		topic string
		want  bool
	}{
		{"sensors/dev1/temp", true}, {"sensors/dev2/temp", false}, {"sensors/secret/x", false},
		{"users/alice/inbox", true}, {"users/bob/inbox", false}, {"other", false},
	}
	for _, tt := range pub {
		if got := a.canPublish(user, client, tt.topic); got != tt.want {
			t.Errorf("canPublish(%q) = %v, want %v", tt.topic, got, tt.want)
		}
	}
	sub := []struct {
		filter string
		want   bool
	}{
		{"sensors/#", true}, {"#", true}, {"+/+/temp", true}, {"sensors/secret/#", false},
		{"sensors/secret/a", false}, {"users/alice/inbox", true}, {"users/+/inbox", true},
		{"admin/#", false}, {"$SYS/#", false},
	}
	for _, tt := range sub {
		if got := a.canSubscribe(user, client, tt.filter); got != tt.want {
			t.Errorf("canSubscribe(%q) = %v, want %v", tt.filter, got, tt.want)
		}
	}
	recv := []struct {
		topic string
		want  bool
	}{
		{"sensors/x/temp", true}, {"sensors/secret/key", false}, {"users/bob/inbox", false}, {"admin/x", false},
	}
	for _, tt := range recv {
		if got := a.canReceive(user, client, tt.topic); got != tt.want {
			t.Errorf("canReceive(%q) = %v, want %v", tt.topic, got, tt.want)
		}
	}
	// A client id that would escape its level never matches.
	if a.canPublish(user, "x/#", "sensors/x/#") || a.canPublish(user, "+", "sensors/+/a") {
		t.Error("substitution with wildcard characters must not match")
	}
}

func TestValidPattern(t *testing.T) {
	for _, p := range []string{"a/b", "#", "a/+/c", "%u/#", "x/%c"} {
		if err := validPattern(p); err != nil {
			t.Errorf("validPattern(%q) = %v", p, err)
		}
	}
	for _, p := range []string{"", "a/#/b", "a+/b", "a/b#", "x%u/y"} {
		if err := validPattern(p); err == nil {
			t.Errorf("validPattern(%q) = nil, want error", p)
		}
	}
}
