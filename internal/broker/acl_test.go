package broker

import "testing"

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
