package config

import "testing"

func TestResolvePaths(t *testing.T) {
	type tls struct {
		CertFile string `yaml:"cert_file"`
		URL      string `yaml:"url"`
	}
	type listener struct {
		Path string `yaml:"path"`
		TLS  *tls   `yaml:"tls"`
	}
	type cfg struct {
		DataDir   string            `yaml:"data_dir"`
		Name      string            `yaml:"name"`
		Dir       string            `yaml:"dir"`
		Listeners []listener        `yaml:"listeners"`
		Labels    map[string]string `yaml:"labels"`
		Abs       string            `yaml:"state_file"`
		Empty     string            `yaml:"log_dir"`
	}
	c := cfg{
		DataDir:   "data",
		Name:      "data",
		Dir:       "../rules",
		Listeners: []listener{{Path: "run/mqtt.sock", TLS: &tls{CertFile: "certs/a.pem", URL: "x/y"}}},
		Labels:    map[string]string{"dir": "rel"},
		Abs:       "/var/lib/outpost/state.json",
	}
	ResolvePaths(&c, "/etc/outpost")
	want := cfg{
		DataDir:   "/etc/outpost/data",
		Name:      "data",
		Dir:       "/etc/rules",
		Listeners: []listener{{Path: "/etc/outpost/run/mqtt.sock", TLS: &tls{CertFile: "/etc/outpost/certs/a.pem", URL: "x/y"}}},
		Labels:    map[string]string{"dir": "rel"},
		Abs:       "/var/lib/outpost/state.json",
	}
	if c.DataDir != want.DataDir || c.Name != want.Name || c.Dir != want.Dir || c.Abs != want.Abs || c.Empty != "" ||
		c.Listeners[0].Path != want.Listeners[0].Path || c.Listeners[0].TLS.CertFile != want.Listeners[0].TLS.CertFile ||
		c.Listeners[0].TLS.URL != "x/y" || c.Labels["dir"] != "rel" {
		t.Fatalf("got %+v (tls %+v), want %+v", c, *c.Listeners[0].TLS, want)
	}
	before := c
	ResolvePaths(&c, "")
	if c.DataDir != before.DataDir {
		t.Fatal("empty base must change nothing")
	}
}
