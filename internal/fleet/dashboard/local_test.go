package dashboard

import "testing"

func TestLocalPath(t *testing.T) {
	for _, c := range []struct {
		next string
		want bool
	}{
		{"/", true}, {"/gateways?selector=a%3Db", true}, {"/rollouts/r1", true},
		{"", false}, {"gateways", false}, {"//evil.example", false}, {"/\\evil.example", false},
		{"https://evil.example/", false}, {"/\tevil", false}, {"/a\r\nSet-Cookie: x", false},
	} {
		if got := localPath(c.next); got != c.want {
			t.Errorf("localPath(%q) = %v, want %v", c.next, got, c.want)
		}
	}
}
