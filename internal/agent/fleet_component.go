package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/outpost-edge/outpost/internal/fleet/proto"
	"github.com/outpost-edge/outpost/internal/supervisor/recipe"
)

// Fleet components (docs/fleet.md, kind component): the object's spec
// carries a recipe, {"yaml": "..."}, which becomes fleet-NAME.yaml in the
// supervisor's recipes_dir. The supervisor's own reload installs, updates
// (restart) or removes the component; its live state is observed for the
// status (fleetApplier.Observe).

// fleetRecipeFile is the recipes_dir file of a fleet component.
func fleetRecipeFile(name string) string { return "fleet-" + name + ".yaml" }

func (f fleetApplier) recipesDir() (string, error) {
	if f.a.Supervisor == nil {
		return "", errors.New("the supervisor is not enabled on this gateway (no supervisor: section)")
	}
	return f.a.Config().Supervisor.RecipesDir, nil
}

// applyComponent validates the recipe (file:line:col errors), writes it and
// reloads the supervisor; a recipe the supervisor rejects with the others
// (a dependency cycle, a name another recipe has) is put back.
func (f fleetApplier) applyComponent(ctx context.Context, d proto.Desired) error {
	var spec struct {
		YAML string `json:"yaml"`
	}
	dec := json.NewDecoder(bytes.NewReader(d.Spec))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&spec); err != nil {
		return fmt.Errorf("spec: %w (want {\"yaml\": \"<recipe>\"})", err)
	}
	dir, err := f.recipesDir()
	if err != nil {
		return err
	}
	file := fleetRecipeFile(d.Name)
	path := filepath.Join(dir, file)
	r, err := recipe.Parse(path, []byte(spec.YAML))
	if err != nil {
		return err
	}
	if r.Name != d.Name {
		return fmt.Errorf("%s: name: the recipe names component %q; a fleet component's recipe must name its slot %q", path, r.Name, d.Name)
	}
	old, oldErr := os.ReadFile(path)
	if err := writeFileAtomic(path, []byte(spec.YAML)); err != nil {
		return err
	}
	if err := f.a.Supervisor.Reload(ctx); err != nil {
		f.restoreRecipe(ctx, path, old, oldErr)
		return err
	}
	if e := f.recipeError(d.Name, path); e != "" {
		f.restoreRecipe(ctx, path, old, oldErr)
		return errors.New(e)
	}
	return nil
}

// recipeError is the supervisor's rejection of the fleet recipe, if any.
func (f fleetApplier) recipeError(name, path string) string {
	for _, st := range f.a.Supervisor.Components() {
		if st.Error != "" && (st.Recipe == path || st.Name == name) {
			return st.Error
		}
	}
	return ""
}

func (f fleetApplier) restoreRecipe(ctx context.Context, path string, old []byte, oldErr error) {
	if oldErr == nil {
		writeFileAtomic(path, old)
	} else {
		os.Remove(path)
	}
	if err := f.a.Supervisor.Reload(ctx); err != nil {
		f.a.log.Error("fleet: reloading the supervisor after a rejected recipe", "module", "fleet", "err", err)
	}
}

func (f fleetApplier) removeComponent(ctx context.Context, name string) error {
	dir, err := f.recipesDir()
	if err != nil {
		return err
	}
	if err := os.Remove(filepath.Join(dir, fleetRecipeFile(name))); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return f.a.Supervisor.Reload(ctx)
}

// Observe implements client.Observer: a fleet component's supervisor
// state, restarts and reason; the agent version's trial result.
func (f fleetApplier) Observe(kind, name string) (state string, restarts int, reason string, ok bool) {
	if kind == proto.KindAgentVersion {
		st, why := f.observeAgentVersion()
		return st, 0, why, st != ""
	}
	if kind != proto.KindComponent || f.a.Supervisor == nil {
		return "", 0, "", false
	}
	st, err := f.a.Supervisor.Component(name)
	if err != nil {
		return "missing", 0, err.Error(), true
	}
	return string(st.State), st.Restarts, st.Reason, true
}
