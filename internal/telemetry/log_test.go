package telemetry

import (
	"bytes"
	"strings"
	"testing"
)

// TestLevelAndFormatChangeLive: loggers derived before a change (With) follow
// the new level and format, as a config reload requires.
func TestLevelAndFormatChangeLive(t *testing.T) {
	var buf bytes.Buffer
	logs := NewLogs(&buf, LogConfig{Level: "info", Format: "text"})
	log := logs.Logger().With("module", "x")
	log.Debug("hidden")
	log.Info("shown-text")
	logs.Apply(LogConfig{Level: "debug", Format: "json"})
	log.Debug("shown-json")
	out := buf.String()
	if strings.Contains(out, "hidden") {
		t.Fatalf("debug line logged at info level:\n%s", out)
	}
	if !strings.Contains(out, "msg=shown-text module=x") {
		t.Fatalf("text line missing:\n%s", out)
	}
	if !strings.Contains(out, `"msg":"shown-json","module":"x"`) {
		t.Fatalf("json line after the change missing or without the attribute:\n%s", out)
	}
}

func TestLogConfigValidate(t *testing.T) {
	if err := (LogConfig{Level: "loud", Format: "xml"}).Validate(); err == nil ||
		!strings.Contains(err.Error(), "level") || !strings.Contains(err.Error(), "format") {
		t.Fatalf("got %v", err)
	}
}
