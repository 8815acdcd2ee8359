package tuf

import (
	"context"
	"crypto/ed25519"
	"fmt"
	"maps"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"sync"
	"time"
)

// Delegated targets roles, one level deep.
//
// targets.json may delegate parts of the target namespace to other roles
// ("delegations": keys, and roles with a name, key ids, a threshold,
// path patterns and a terminating flag), for instance one signing key per
// platform or per release team, so that the top-level targets key can stay
// offline. A delegated role's metadata is <name>.json (N.<name>.json with
// consistent snapshots), listed in snapshot.json like targets.json, with
// _type "targets", signed by the threshold of its own keys as listed in the
// delegation.
//
// The client trusts a target from a delegated role only if its name
// matches one of the role's path patterns (path.Match: "*" does not cross
// "/"), and resolves names in the TUF order: top-level targets first, then
// the delegated roles in their listed order; a terminating role whose
// patterns match a name ends the search for it even if it lacks the name.
// Limits: delegated roles may not delegate further (such metadata is
// rejected), at most 32 roles, no hashed bins (succinct delegations).

// Delegations is the "delegations" object of targets metadata.
type Delegations struct {
	Keys  map[string]*Key  `json:"keys"`
	Roles []*DelegatedRole `json:"roles"`
}

// DelegatedRole is one delegation.
type DelegatedRole struct {
	Name        string   `json:"name"`
	KeyIDs      []string `json:"keyids"`
	Threshold   int      `json:"threshold"`
	Paths       []string `json:"paths"`
	Terminating bool     `json:"terminating"`
}

// MaxDelegations bounds the delegated roles a targets file may list (each
// costs a request when it changes).
const MaxDelegations = 32

// Delegated role names are file names: no dots (they cannot collide with
// N.root.json or the top-level files), no slashes.
var roleNameRE = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`^[a-z0-9][a-z0-9_-]{0,63}$`) })

func (d *Delegations) validate() error {
	if d == nil {
		return nil
	}
	if len(d.Roles) > MaxDelegations {
		return fmt.Errorf("%w: delegations: %d roles, at most %d", ErrMalformed, len(d.Roles), MaxDelegations)
	}
	for id, k := range d.Keys {
		if k == nil {
			return fmt.Errorf("%w: delegations: key %s is null", ErrMalformed, id)
		}
		if _, err := k.PublicKey(); err != nil {
			return fmt.Errorf("%w: delegations: key %s: %v", ErrMalformed, id, err)
		}
		if k.ID() != id {
			return fmt.Errorf("%w: delegations: key id %s does not match key", ErrMalformed, id)
		}
	}
	seen := map[string]bool{}
	for i, r := range d.Roles {
		if r == nil {
			return fmt.Errorf("%w: delegations: role %d is null", ErrMalformed, i)
		}
		switch {
		case !roleNameRE().MatchString(r.Name):
			return fmt.Errorf("%w: delegations: role name %q (want %s)", ErrMalformed, r.Name, roleNameRE())
		case r.Name == RoleRoot || r.Name == RoleTargets || r.Name == RoleSnapshot || r.Name == RoleTimestamp:
			return fmt.Errorf("%w: delegations: role name %q is a top-level role", ErrMalformed, r.Name)
		case seen[r.Name]:
			return fmt.Errorf("%w: delegations: role %q listed twice", ErrMalformed, r.Name)
		case r.Threshold < 1 || len(r.KeyIDs) < r.Threshold:
			return fmt.Errorf("%w: delegations: role %s: %d keys, threshold %d", ErrMalformed, r.Name, len(r.KeyIDs), r.Threshold)
		case len(r.Paths) == 0:
			return fmt.Errorf("%w: delegations: role %s has no paths", ErrMalformed, r.Name)
		}
		seen[r.Name] = true
		for _, id := range r.KeyIDs {
			if d.Keys[id] == nil {
				return fmt.Errorf("%w: delegations: role %s: key %s not listed", ErrMalformed, r.Name, id)
			}
		}
		for _, p := range r.Paths {
			if _, err := path.Match(p, ""); err != nil || p == "" {
				return fmt.Errorf("%w: delegations: role %s: path pattern %q: %v", ErrMalformed, r.Name, p, err)
			}
		}
	}
	return nil
}

// matches reports whether target name is within the role's paths.
func (r *DelegatedRole) matches(name string) bool {
	for _, p := range r.Paths {
		if ok, _ := path.Match(p, name); ok {
			return true
		}
	}
	return false
}

// resolve returns the targets visible through delegations: top's targets,
// then each role's in order, each name taken from the first role that has
// it unless an earlier terminating role matching the name lacks it. Names
// outside a role's paths are ignored.
func resolve(top *Targets, delegated map[string]*Targets) *Targets {
	out := *top
	out.Targets = maps.Clone(top.Targets)
	if out.Targets == nil {
		out.Targets = map[string]TargetFile{}
	}
	if top.Delegations == nil {
		return &out
	}
	var terminating []*DelegatedRole
	for _, r := range top.Delegations.Roles {
		t := delegated[r.Name]
		if t == nil {
			continue
		}
		for name, tf := range t.Targets {
			if _, taken := out.Targets[name]; taken || !r.matches(name) {
				continue
			}
			if slices.ContainsFunc(terminating, func(tr *DelegatedRole) bool { return tr.matches(name) }) {
				continue
			}
			out.Targets[name] = tf
		}
		if r.Terminating {
			terminating = append(terminating, r)
		}
	}
	return &out
}

// updateDelegated fetches (or reuses from the cache) each delegated role's
// metadata, verified against the delegation's keys and the snapshot, and
// replaces c.targets with the resolved view.
func (c *Client) updateDelegated(ctx context.Context) error {
	d := c.targets.Delegations
	if d == nil || len(d.Roles) == 0 {
		return nil
	}
	delegated := map[string]*Targets{}
	for _, dr := range d.Roles {
		file := dr.Name + ".json"
		ref, ok := c.snapshot.Meta[file]
		if !ok {
			return fmt.Errorf("tuf: snapshot: %w: no %s for delegated role %s", ErrMixAndMatch, file, dr.Name)
		}
		rk := &RoleKeys{KeyIDs: dr.KeyIDs, Threshold: dr.Threshold}
		verify := func(e *Envelope) error { return verifyKeys(d.Keys, rk, dr.Name, e) }
		var t *Targets
		if e := c.loadTrustedBy(file, &ref, verify); e != nil {
			if old, err := ParseTargets(e); err == nil && old.Version == ref.Version && !old.Expired(c.Now()) {
				t = old
			}
		}
		if t == nil {
			name, raw, e, err := c.fetchVerifiedBy(ctx, file, ref, MaxTargetsSize, verify)
			if err != nil {
				return err
			}
			if t, err = ParseTargets(e); err != nil {
				return fmt.Errorf("tuf: %s: %w", name, err)
			}
			if t.Version != ref.Version {
				return fmt.Errorf("tuf: %s: %w: version %d, snapshot says %d", name, ErrMixAndMatch, t.Version, ref.Version)
			}
			if t.Expired(c.Now()) {
				return fmt.Errorf("tuf: %s v%d expired %s: %w", name, t.Version, t.Expires.Format(time.RFC3339), ErrExpired)
			}
			if t.Delegations != nil && len(t.Delegations.Roles) > 0 {
				return fmt.Errorf("tuf: %s: %w: nested delegations are not supported", name, ErrMalformed)
			}
			if err := c.persist(file, raw); err != nil {
				return err
			}
		}
		delegated[dr.Name] = t
	}
	c.targets = resolve(c.targets, delegated)
	return nil
}

// Delegate creates a key for a new delegated role name (in KeyDir,
// <name>.key, encrypted with Passphrase unless empty) and delegates the
// target paths matching patterns to it. Publish signs it.
func (r *Repo) Delegate(name string, patterns []string, terminating bool) error {
	if r.Targets.Delegations == nil {
		r.Targets.Delegations = &Delegations{Keys: map[string]*Key{}}
	}
	d := r.Targets.Delegations
	if d.role(name) != nil {
		return fmt.Errorf("tuf: role %s is already delegated", name)
	}
	keyPath := filepath.Join(r.KeyDir, name+".key")
	trial := &Delegations{Keys: map[string]*Key{}, Roles: []*DelegatedRole{{Name: name, Threshold: 1, Paths: patterns}}}
	k := GenerateKey()
	pk := NewKey(k.Public().(ed25519.PublicKey))
	trial.Keys[pk.ID()] = pk
	trial.Roles[0].KeyIDs = []string{pk.ID()}
	if err := trial.validate(); err != nil {
		return err
	}
	if err := WriteKeyNew(keyPath, k, r.Passphrase); err != nil {
		return err
	}
	d.Keys[pk.ID()] = pk
	d.Roles = append(d.Roles, &DelegatedRole{Name: name, KeyIDs: []string{pk.ID()}, Threshold: 1, Paths: patterns, Terminating: terminating})
	if r.Delegated == nil {
		r.Delegated = map[string]*Targets{}
	}
	r.Delegated[name] = &Targets{Common: Common{Type: RoleTargets, SpecVersion: SpecVersion}, Targets: map[string]TargetFile{}}
	return d.validate()
}

func (d *Delegations) role(name string) *DelegatedRole {
	if d == nil {
		return nil
	}
	for _, r := range d.Roles {
		if r.Name == name {
			return r
		}
	}
	return nil
}

// AddDelegatedTarget is AddTarget for a delegated role: name must match
// the role's paths.
func (r *Repo) AddDelegatedTarget(role, name, src string, custom any) (TargetFile, error) {
	dr := r.Targets.Delegations.role(role)
	if dr == nil || r.Delegated[role] == nil {
		return TargetFile{}, fmt.Errorf("tuf: no delegated role %q (create it with Delegate)", role)
	}
	if !dr.matches(name) {
		return TargetFile{}, fmt.Errorf("tuf: target %s is outside role %s's paths %v", name, role, dr.Paths)
	}
	tf, err := r.storeTarget(name, src, custom)
	if err != nil {
		return TargetFile{}, err
	}
	r.Delegated[role].Targets[name] = tf
	return tf, nil
}

// AllTargets is every published or added target as a client resolves them
// (top-level targets first, then the delegated roles).
func (r *Repo) AllTargets() map[string]TargetFile {
	return resolve(r.Targets, r.Delegated).Targets
}

// markSigned records a delegated role's current content as signed.
func (r *Repo) markSigned(name string) {
	if r.signed == nil {
		r.signed = map[string][]byte{}
	}
	if t := r.Delegated[name]; t != nil {
		r.signed[name], _ = canonicalValue(t)
	}
}

// publishDelegated signs a new version of the delegated roles that need it
// and returns every role's snapshot entry. With only set, just that role
// is signed; otherwise each role whose content changed since it was last
// signed (or that never was). Unsigned roles reuse the current snapshot's
// entry.
func (r *Repo) publishDelegated(now time.Time, only string) (map[string]MetaFile, error) {
	meta := map[string]MetaFile{}
	if r.Targets.Delegations == nil {
		return meta, nil
	}
	for _, dr := range r.Targets.Delegations.Roles {
		file := dr.Name + ".json"
		t := r.Delegated[dr.Name]
		if t == nil {
			return nil, fmt.Errorf("tuf: delegated role %s has no metadata", dr.Name)
		}
		var prev MetaFile
		var havePrev bool
		if r.Snapshot != nil {
			prev, havePrev = r.Snapshot.Meta[file]
		}
		cur, _ := canonicalValue(t)
		unchanged := r.signed[dr.Name] != nil && string(r.signed[dr.Name]) == string(cur)
		if havePrev && ((only != "" && dr.Name != only) || (only == "" && unchanged)) {
			meta[file] = prev
			continue
		}
		if only != "" && dr.Name != only {
			return nil, fmt.Errorf("tuf: delegated role %s was never signed: publish it with its key first", dr.Name)
		}
		t.Version++
		t.Expires = now.Add(r.TargetsExpiry)
		raw, err := r.signWith(dr.Name, t)
		if err != nil {
			return nil, err
		}
		if err := r.writeMeta(file, t.Version, raw); err != nil {
			return nil, err
		}
		meta[file] = metaFor(t.Version, raw)
		r.markSigned(dr.Name)
	}
	return meta, nil
}

// rotateDelegated replaces a delegated role's key in the delegation (the
// old key is kept as <role>.key.old); the next Publish signs targets with
// the new key id and the role with the new key.
func (r *Repo) rotateDelegated(role string) error {
	d := r.Targets.Delegations
	dr := d.role(role)
	oldID, pk, save, err := r.successorKey(role)
	if err != nil {
		return err
	}
	dr.KeyIDs = slices.DeleteFunc(dr.KeyIDs, func(id string) bool { return id == oldID })
	dr.KeyIDs = append(dr.KeyIDs, pk.ID())
	if !slices.ContainsFunc(d.Roles, func(o *DelegatedRole) bool { return slices.Contains(o.KeyIDs, oldID) }) {
		delete(d.Keys, oldID)
	}
	d.Keys[pk.ID()] = pk
	delete(r.signed, role) // re-signed with the new key by the next Publish
	return save()
}
