package config

import (
	"testing"
	"time"

	"gopkg.in/yaml.v3"
)

func TestParseSize(t *testing.T) {
	tests := []struct {
		in      string
		want    int64
		wantErr bool
	}{
		{"512", 512, false}, {"64KiB", 64 << 10, false}, {"10MiB", 10 << 20, false}, {"1GiB", 1 << 30, false},
		{"10MB", 10e6, false}, {"1.5KiB", 1536, false}, {"10K", 10 << 10, false}, {" 3 MiB ", 3 << 20, false},
		{"", 0, true}, {"abc", 0, true}, {"-1", 0, true}, {"10XB", 0, true},
	}
	for _, tt := range tests {
		got, err := ParseSize(tt.in)
		if (err != nil) != tt.wantErr || got != tt.want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d, err=%v", tt.in, got, err, tt.want, tt.wantErr)
		}
	}
}

func TestDurationYAML(t *testing.T) {
	var v struct{ D Duration }
	if err := yaml.Unmarshal([]byte("d: 250ms"), &v); err != nil || v.D.D() != 250*time.Millisecond {
		t.Fatalf("got %v %v", v.D, err)
	}
	if err := yaml.Unmarshal([]byte("d: 3"), &v); err != nil || v.D.D() != 3*time.Second {
		t.Fatalf("got %v %v", v.D, err)
	}
	if err := yaml.Unmarshal([]byte("d: soon"), &v); err == nil {
		t.Fatal("want error")
	}
}
