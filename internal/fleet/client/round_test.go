package client

import "testing"

func TestRoundQueue(t *testing.T) {
	for _, c := range []struct{ in, want int64 }{{0, 0}, {7, 7}, {100, 100}, {101, 100}, {149, 150}, {1234, 1200}, {1250, 1300}, {98765, 99000}, {1000001, 1000000}} {
		if got := roundQueue(c.in); got != c.want {
			t.Errorf("roundQueue(%d) = %d, want %d", c.in, got, c.want)
		}
	}
}
