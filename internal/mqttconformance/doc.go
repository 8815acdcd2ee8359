// Package mqttconformance tests Outpost's embedded broker against the
// normative statements of MQTT 3.1.1 and MQTT 5.0, over real TCP, with a
// raw-packet client that sees every byte and reason code (no client library
// that could hide or repair a broker's mistake).
//
// Each test cites the statements it checks ([MQTT-x.y.z-n], or the section
// when the requirement has no number) and runs for every protocol version
// where the statement applies. The broker runs embedded, configured as the
// agent runs it: persistence on, and a pipeline hook that acknowledges QoS 1
// publishes either synchronously (OnPublish) or asynchronously after a group
// commit (OnPublishAsync); behaviour that depends on that path is tested on
// both.
//
// The package holds tests only; it runs in CI with `go test ./...` in a few
// seconds.
package mqttconformance
