package agent

import (
	"context"
	"net/http"

	"github.com/outpost-edge/outpost/internal/broker"
	"github.com/outpost-edge/outpost/internal/message"
	"github.com/outpost-edge/outpost/internal/uplink"
)

// LaneSinkPrefix names the pipeline sink of an uplink lane: routes send data
// to the cloud with `to: ["uplink:telemetry"]`.
const LaneSinkPrefix = uplink.SinkPrefix

// downlink republishes cloud commands on the local broker.
type downlink struct{ b *broker.Broker }

func (d downlink) Deliver(_ context.Context, m *message.Message) error {
	return d.b.PublishMessage(m)
}

// queueStatusHandler serves GET /api/v1/queue: per-lane depth, bytes,
// oldest age, drops by reason and drain progress, for `outpost queue status`.
func (a *Agent) queueStatusHandler(mux *http.ServeMux) {
	mux.HandleFunc("GET /api/v1/queue", func(w http.ResponseWriter, _ *http.Request) {
		out := map[string]any{"lanes": a.lanes.Stats()}
		if a.Uplink != nil {
			out["uplink"] = a.Uplink.Status()
		}
		writeJSON(w, out)
	})
}
