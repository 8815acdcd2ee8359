package loadgen

import (
	"context"
	"errors"
	"testing"
)

func TestMosquittoQoS0(t *testing.T) {
	m := startMosquitto(t, nil)
	res := runBench(t, Config{URL: m.url, Publishers: 4, Subscribers: 1, Rate: 1000, Count: 400, BrokerPID: m.pid})
	checkComplete(t, res, 400)
	if res.Broker == nil || res.Broker.Error != "" || res.Broker.RSSBytes <= 0 {
		t.Errorf("broker stats %+v", res.Broker)
	}
}

func TestMosquittoQoS1MQTT5(t *testing.T) {
	m := startMosquitto(t, nil, "max_inflight_messages 20")
	res := runBench(t, Config{URL: m.url, MQTTVersion: 5, QoS: 1, Publishers: 2, Subscribers: 2, Rate: 1000, Count: 300,
		Payload: PayloadJSON})
	checkComplete(t, res, 300)
	if res.Acked != 300 || res.BadAcks != 0 {
		t.Errorf("acked %d bad %d", res.Acked, res.BadAcks)
	}
	// Mosquitto advertises Receive Maximum 20 (max_inflight_messages): the
	// window follows it.
	if res.Inflight != 20 {
		t.Errorf("window %d, want 20 from the broker's Receive Maximum", res.Inflight)
	}
}

func TestMosquittoAuthFailure(t *testing.T) {
	m := startMosquitto(t, map[string]string{"bench": "secret"})
	res := runBench(t, Config{URL: m.url, Username: "bench", Password: "secret", Subscribers: 1, Count: 20, Rate: 200})
	checkComplete(t, res, 20)
	for _, v := range []int{4, 5} {
		_, err := Run(context.Background(), Config{URL: m.url, MQTTVersion: v, Username: "bench", Password: "nope", Count: 10})
		if !errors.Is(err, ErrNotAuthorized) {
			t.Errorf("MQTT %d: %v", v, err)
		}
	}
	_, err := Run(context.Background(), Config{URL: m.url, Count: 10})
	if !errors.Is(err, ErrNotAuthorized) {
		t.Errorf("anonymous: %v", err)
	}
}
