package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"

	"gopkg.in/yaml.v3"

	"github.com/outpost-edge/outpost/internal/config"
)

// fleetFragments are the config fragments the fleet server wants on this
// gateway (docs/fleet.md, kind config): YAML merged over the config file in
// the order of their slot names. Every config change (a file reload or a
// fragment) holds the lock, so a file reload keeps the fragments and a
// fragment never races a reload. The lock is a channel so that waiting for
// it ends with the context: a reload that restarts the fleet module waits
// for the syncer, which may be waiting for the lock.
type fleetFragments struct {
	once   sync.Once
	sem    chan struct{}
	byName map[string][]byte
}

func (f *fleetFragments) lock(ctx context.Context) error {
	f.once.Do(func() { f.sem = make(chan struct{}, 1) })
	select {
	case f.sem <- struct{}{}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (f *fleetFragments) unlock() { <-f.sem }

// fragmentFile names a fragment in error positions.
func fragmentFile(name string) string { return "fleet config/" + name }

// fragmentKeysRefused are top-level sections a fragment may not set: they
// decide how the gateway reaches the server and who it is.
var fragmentKeysRefused = map[string]string{
	"fleet":    "the fleet section is set on the gateway only (a fragment could cut it off from the server)",
	"node_id":  "node_id is set on the gateway only",
	"data_dir": "data_dir is set on the gateway only",
}

// fragmentSpec is a config object's spec: {"yaml": "..."}.
type fragmentSpec struct {
	YAML string `json:"yaml"`
}

func parseFragmentSpec(name string, raw []byte) ([]byte, error) {
	var spec fragmentSpec
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&spec); err != nil {
		return nil, fmt.Errorf("spec: %w (want {\"yaml\": \"...\"})", err)
	}
	var root yaml.Node
	if err := yaml.Unmarshal([]byte(spec.YAML), &root); err != nil {
		return nil, fmt.Errorf("%s: invalid YAML: %w", fragmentFile(name), err)
	}
	if len(root.Content) == 1 && root.Content[0].Kind == yaml.MappingNode {
		m := root.Content[0]
		for i := 0; i+1 < len(m.Content); i += 2 {
			if why, ok := fragmentKeysRefused[m.Content[i].Value]; ok {
				k := m.Content[i]
				return nil, fmt.Errorf("%s:%d:%d: %s: %s", fragmentFile(name), k.Line, k.Column, k.Value, why)
			}
		}
	}
	return []byte(spec.YAML), nil
}

// loadConfigLocked reads the config file with frags merged over it,
// defaulted and validated (errors name the fragment, line:column and field).
// The frags lock is held.
func (a *Agent) loadConfigLocked(frags map[string][]byte) (*Config, error) {
	if len(frags) == 0 {
		return Load(a.path)
	}
	if a.path == "" {
		return nil, errors.New("config fragments need an agent started from a config file")
	}
	names := make([]string, 0, len(frags))
	for n := range frags {
		names = append(names, n)
	}
	sort.Strings(names)
	ovs := make([]config.Overlay, 0, len(names))
	for _, n := range names {
		ovs = append(ovs, config.Overlay{Name: fragmentFile(n), Data: frags[n]})
	}
	abs, err := filepath.Abs(a.path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	b, err := os.ReadFile(a.path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	c := Config{baseDir: filepath.Dir(abs)}
	if err := config.ParseOverlays(a.path, b, ovs, &c, config.Options{}); err != nil {
		return nil, err
	}
	return &c, nil
}

// applyFragment sets (data != nil) or removes the fragment name and
// applies the merged config through the hot-reload path (Agent.Apply). An
// invalid result or a change that needs a restart changes nothing; a
// module that fails to take its new section is put back on the previous
// config.
func (a *Agent) applyFragment(ctx context.Context, name string, data []byte) error {
	if err := a.frags.lock(ctx); err != nil {
		return err
	}
	defer a.frags.unlock()
	next := make(map[string][]byte, len(a.frags.byName)+1)
	for k, v := range a.frags.byName {
		next[k] = v
	}
	if data == nil {
		if _, ok := next[name]; !ok {
			return nil
		}
		delete(next, name)
	} else {
		next[name] = data
	}
	cfg, err := a.loadConfigLocked(next)
	if err != nil {
		return err
	}
	prev := a.Config()
	if err := a.Apply(ctx, cfg); err != nil {
		if rerr := a.Apply(ctx, prev); rerr != nil {
			a.log.Error("fleet: restoring the previous config after a failed fragment", "module", "fleet", "err", rerr)
		}
		return err
	}
	a.frags.byName = next
	return nil
}

// netpolFragment is the fragment slot of the netpol object name ("/"
// cannot occur in an object name, so it never meets a config object).
func netpolFragment(name string) string { return "netpol/" + name }

// applyNetpolObject applies a fleet netpol object (docs/netpol.md, "From
// the fleet"): its spec is the netpol: section, merged over the file's
// like a config fragment (so through the same strict decoding, validation
// and hot reload; a bad policy leaves the running one). The netpol module
// is built at start only: the config file needs a netpol: section, even
// an empty one. One netpol object per gateway: a second is refused.
func (a *Agent) applyNetpolObject(ctx context.Context, name string, spec []byte) error {
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(spec, &obj); err != nil || obj == nil {
		return errors.New("spec: must be a JSON object (the netpol: section)")
	}
	if a.Config().Netpol == nil {
		return errors.New("netpol: this gateway's config file has no netpol: section; add `netpol: {}` and restart it (the module is built at start)")
	}
	if err := a.frags.lock(ctx); err != nil {
		return err
	}
	for k := range a.frags.byName {
		if strings.HasPrefix(k, "netpol/") && k != netpolFragment(name) {
			a.frags.unlock()
			return fmt.Errorf("netpol: netpol object %q already applies to this gateway; one netpol object per gateway", strings.TrimPrefix(k, "netpol/"))
		}
	}
	a.frags.unlock()
	// JSON is YAML: the spec becomes the fragment's netpol: value as is.
	return a.applyFragment(ctx, netpolFragment(name), append([]byte("netpol: "), spec...))
}
