package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/outpost-edge/outpost/internal/fleet/proto"
	"github.com/outpost-edge/outpost/internal/ota"
)

// Fleet agent version (docs/fleet.md, kind agentversion, spec
// {"version": "1.4.0"}): the OTA updater is pinned to that version and
// triggered; it downloads it (delta or full) from its repository (the
// server's, docs/ota.md), installs it and restarts into it on trial; the
// health gate commits it or rolls it back. The pin is kept in
// FLEET_DIR/agentversion so it survives the restart. Observe reports the
// trial result in the condition's state.

const agentVersionFile = "agentversion"

func (f fleetApplier) fleetDir() string {
	if c := f.a.Config().Fleet; c != nil {
		return c.Dir
	}
	return ""
}

func (f fleetApplier) applyAgentVersion(_ context.Context, d proto.Desired) error {
	var spec struct {
		Version string `json:"version"`
	}
	dec := json.NewDecoder(bytes.NewReader(d.Spec))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&spec); err != nil {
		return fmt.Errorf("spec: %w (want {\"version\": \"1.4.0\"})", err)
	}
	if err := ota.CanonicalVersion(spec.Version); err != nil {
		return fmt.Errorf("spec.version: %w", err)
	}
	if f.a.OTA == nil || !f.a.OTA.Enabled() {
		return errors.New("OTA is not enabled on this gateway (ota: enabled, url, root; docs/ota.md)")
	}
	running := f.a.OTA.Status().Running
	c := ota.CompareVersions(spec.Version, running)
	if c < 0 {
		return fmt.Errorf("spec.version: %s is older than the running %s; gateways only move to higher versions", spec.Version, running)
	}
	if err := f.a.OTA.SetTarget(spec.Version); err != nil {
		return fmt.Errorf("spec.version: %w", err)
	}
	if dir := f.fleetDir(); dir != "" {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return err
		}
		if err := writeFileAtomic(filepath.Join(dir, agentVersionFile), []byte(spec.Version+"\n")); err != nil {
			return err
		}
	}
	if c > 0 {
		f.a.log.Info("fleet: agent version desired; updating", "module", "fleet", "running", running, "version", spec.Version)
		f.a.OTA.Trigger(true)
	}
	return nil
}

func (f fleetApplier) removeAgentVersion() error {
	if f.a.OTA != nil {
		f.a.OTA.SetTarget("")
	}
	if dir := f.fleetDir(); dir != "" {
		if err := os.Remove(filepath.Join(dir, agentVersionFile)); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
	}
	return nil
}

// restoreAgentVersion pins the updater to the version the fleet wanted
// before this process started (fleet module start).
func (f fleetApplier) restoreAgentVersion() {
	dir := f.fleetDir()
	if dir == "" || f.a.OTA == nil {
		return
	}
	b, err := os.ReadFile(filepath.Join(dir, agentVersionFile))
	if err != nil {
		return
	}
	if err := f.a.OTA.SetTarget(strings.TrimSpace(string(b))); err != nil {
		f.a.log.Warn("fleet: pinned agent version unreadable", "module", "fleet", "err", err)
	}
}

// observeAgentVersion is the trial result of the desired version: pending,
// downloading, installing, trial, committed, rolled_back or failed.
func (f fleetApplier) observeAgentVersion() (state string, reason string) {
	if f.a.OTA == nil {
		return "", ""
	}
	want := f.a.OTA.Target()
	st := f.a.OTA.Status()
	switch {
	case want == "":
		return "", ""
	case st.Running == want && st.Phase == ota.PhaseTrial:
		return "trial", fmt.Sprintf("attempt %d", st.Attempts)
	case st.Running == want:
		return "committed", ""
	case slices.Contains(st.Bad, want):
		if st.Last != nil && st.Last.Version == want {
			return "rolled_back", st.Last.Reason
		}
		return "rolled_back", "version " + want + " is marked bad on this gateway"
	case st.Phase == ota.PhaseDownloading || st.Phase == ota.PhaseInstalling:
		return string(st.Phase), ""
	case st.LastError != "":
		return "failed", st.LastError
	}
	return "pending", "running " + st.Running
}
