package mosq

import (
	"fmt"
	"os/exec"
	"strings"
	"testing"
	"time"
)

func pub(t *testing.T, b *Broker, topic, msg string, extra ...string) {
	t.Helper()
	args := []string{"-h", "127.0.0.1", "-p", fmt.Sprint(b.Port), "-q", "1", "-t", topic, "-m", msg, "-V", "mqttv5"}
	if b.Certs != nil {
		args = append(args, "--cafile", b.Certs.CAFile)
		if b.opts.RequireCertificate {
			args = append(args, "--cert", b.Certs.ClientCert, "--key", b.Certs.ClientKey)
		}
	}
	args = append(args, extra...)
	out, err := exec.Command("mosquitto_pub", args...).CombinedOutput()
	if err != nil {
		t.Fatalf("mosquitto_pub: %v: %s", err, out)
	}
}

func TestPlainStopStart(t *testing.T) {
	b := Start(t, Options{Persistence: true})
	sub := Subscribe(t, b, "t/#")
	pub(t, b, "t/1", "one")
	got := sub.WaitN(t, 1, 5*time.Second)
	if got[0].Topic != "t/1" || string(got[0].Payload) != "one" {
		t.Fatalf("got %+v", got[0])
	}
	b.Stop()
	if b.Running() {
		t.Fatal("still running after Stop")
	}
	b.Start()
	// The subscriber reconnects by itself; its persistent session was saved.
	pub(t, b, "t/2", "two")
	// t/1 may come again first (QoS 1 redelivery, DUP set) if the broker
	// stopped before it saw the subscriber's PUBACK.
	sub.Wait(t, 10*time.Second, "t/2 after restart", func(ms []Message) bool {
		for _, m := range ms {
			if m.Topic == "t/2" && string(m.Payload) == "two" {
				return true
			}
		}
		return false
	})
	b.Kill()
	b.Start()
}

func TestTLSAndPasswords(t *testing.T) {
	b := Start(t, Options{RequireCertificate: true, Users: map[string]string{"dev": "s3cret"}, MaxInflight: 100, MaxQueued: -1})
	if b.Certs == nil || !strings.HasPrefix(b.URL(), "mqtts://") {
		t.Fatalf("no TLS: %s", b.URL())
	}
	sub := Subscribe(t, b, "x")
	pub(t, b, "x", "hello", "-u", "dev", "-P", "s3cret")
	sub.WaitN(t, 1, 5*time.Second)
	// Wrong password is refused.
	args := []string{"-h", "127.0.0.1", "-p", fmt.Sprint(b.Port), "-t", "x", "-m", "m", "-u", "dev", "-P", "nope",
		"--cafile", b.Certs.CAFile, "--cert", b.Certs.ClientCert, "--key", b.Certs.ClientKey, "-V", "mqttv5"}
	if out, err := exec.Command("mosquitto_pub", args...).CombinedOutput(); err == nil {
		t.Fatalf("wrong password accepted: %s", out)
	}
}
