package recipe

import (
	"fmt"
	"sort"
	"strings"
)

// Graph is a resolved set of recipes: every dependency exists, satisfies
// its version constraint, and there is no cycle.
type Graph struct {
	byName     map[string]*Recipe
	order      []string            // start order: dependencies first, ties by name
	dependents map[string][]string // name -> components that depend on it (any type)
}

// Resolve builds the dependency graph of recipes. Recipes that cannot be
// part of it are left out and reported in rejected (keyed by component
// name, or by file for a duplicate): a duplicate name (the later file loses),
// an unknown dependency, an unsatisfied version constraint, a member of a
// cycle (the error names the cycle), and, transitively, a component whose
// dependency was left out. The others form the graph, so one bad recipe
// never stops the rest.
func Resolve(recipes []*Recipe) (*Graph, map[string]error) {
	rejected := map[string]error{}
	byName := map[string]*Recipe{}
	for _, r := range recipes {
		if prev, dup := byName[r.Name]; dup {
			rejected[r.File] = r.ErrorAt("name", fmt.Errorf("%w: %q is already defined in %s", ErrDuplicate, r.Name, prev.File))
			continue
		}
		byName[r.Name] = r
	}
	// Drop components with unknown or unsatisfied dependencies until stable.
	for changed := true; changed; {
		changed = false
		for _, name := range sortedKeys(byName) {
			r := byName[name]
			for i, d := range r.DependsOn {
				p := fmt.Sprintf("depends_on[%d]", i)
				dep, ok := byName[d.Name]
				if !ok {
					why := "it is not loaded"
					if e, bad := rejected[d.Name]; bad {
						why = "its recipe was rejected: " + firstLine(e.Error())
					}
					rejected[name] = r.ErrorAt(p, fmt.Errorf("%w: %q (%s)", ErrUnknownDependency, d.Name, why))
				} else if !d.Version.IsZero() && !d.Version.Allows(dep.Version) {
					rejected[name] = r.ErrorAt(p, fmt.Errorf("%w: %s is %s, need %s", ErrDependencyVersion, d.Name, dep.Version, d.Version))
				} else {
					continue
				}
				delete(byName, name)
				changed = true
				break
			}
		}
		if changed {
			continue
		}
		// Reject every member of the first cycle found, then re-check.
		if cyc := findCycle(byName); cyc != nil {
			text := strings.Join(cyc, " -> ")
			for _, name := range cyc[:len(cyc)-1] {
				r := byName[name]
				p := "depends_on"
				for i, d := range r.DependsOn {
					if d.Name == nextIn(cyc, name) {
						p = fmt.Sprintf("depends_on[%d]", i)
					}
				}
				rejected[name] = r.ErrorAt(p, fmt.Errorf("%w: %s", ErrCycle, text))
			}
			for _, name := range cyc[:len(cyc)-1] {
				delete(byName, name)
			}
			changed = true
		}
	}
	g := &Graph{byName: byName, dependents: map[string][]string{}}
	for _, name := range sortedKeys(byName) {
		for _, d := range byName[name].DependsOn {
			g.dependents[d.Name] = append(g.dependents[d.Name], name)
		}
	}
	// Topological order, dependencies first, ties broken by name.
	state := map[string]int{}
	var visit func(string)
	visit = func(n string) {
		if state[n] != 0 {
			return
		}
		state[n] = 1
		deps := byName[n].Dependencies("")
		sort.Strings(deps)
		for _, d := range deps {
			visit(d)
		}
		state[n] = 2
		g.order = append(g.order, n)
	}
	for _, name := range sortedKeys(byName) {
		visit(name)
	}
	return g, rejected
}

func firstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i]
	}
	return s
}

func nextIn(cyc []string, name string) string {
	for i := 0; i+1 < len(cyc); i++ {
		if cyc[i] == name {
			return cyc[i+1]
		}
	}
	return ""
}

// findCycle returns a cycle as a path that starts and ends with the same
// name ("a", "b", "a"), or nil.
func findCycle(byName map[string]*Recipe) []string {
	const (
		white = iota
		grey
		black
	)
	color := map[string]int{}
	var stack []string
	var found []string
	var visit func(n string) bool
	visit = func(n string) bool {
		color[n] = grey
		stack = append(stack, n)
		deps := byName[n].Dependencies("")
		sort.Strings(deps)
		for _, d := range deps {
			if _, ok := byName[d]; !ok {
				continue
			}
			switch color[d] {
			case grey:
				for i, s := range stack {
					if s == d {
						found = append(append([]string{}, stack[i:]...), d)
						return true
					}
				}
			case white:
				if visit(d) {
					return true
				}
			}
		}
		stack = stack[:len(stack)-1]
		color[n] = black
		return false
	}
	for _, n := range sortedKeys(byName) {
		if color[n] == white && visit(n) {
			return found
		}
	}
	return nil
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// Get returns the recipe of a component in the graph.
func (g *Graph) Get(name string) (*Recipe, bool) { r, ok := g.byName[name]; return r, ok }

// Order returns component names in start order (dependencies first).
func (g *Graph) Order() []string { return append([]string(nil), g.order...) }

// Len returns the number of components.
func (g *Graph) Len() int { return len(g.order) }

// Dependents returns the components that depend directly on name.
func (g *Graph) Dependents(name string) []string { return append([]string(nil), g.dependents[name]...) }

// HardDependentsClosure returns name's transitive hard dependents (not
// including name), in start order.
func (g *Graph) HardDependentsClosure(name string) []string {
	in := map[string]bool{}
	var walk func(string)
	walk = func(n string) {
		for _, d := range g.dependents[n] {
			r := g.byName[d]
			hard := false
			for _, dep := range r.DependsOn {
				if dep.Name == n && dep.Type == Hard {
					hard = true
				}
			}
			if hard && !in[d] {
				in[d] = true
				walk(d)
			}
		}
	}
	walk(name)
	var out []string
	for _, n := range g.order {
		if in[n] {
			out = append(out, n)
		}
	}
	return out
}

// StopLevels groups components for shutdown: every component appears in a
// level after all components that depend on it, so stopping level by level
// (each level concurrently) stops dependents before their dependencies.
func (g *Graph) StopLevels() [][]string {
	return levels(g.order, func(n string) []string { return g.dependents[n] })
}

// StartLevels groups components so that every dependency is in an earlier
// level than its dependents.
func (g *Graph) StartLevels() [][]string {
	return levels(g.order, func(n string) []string { return g.byName[n].Dependencies("") })
}

// levels assigns each node the level 1 + max(level of its before-nodes).
func levels(order []string, before func(string) []string) [][]string {
	lvl := map[string]int{}
	var get func(string) int
	get = func(n string) int {
		if l, ok := lvl[n]; ok {
			return l
		}
		l := 0
		for _, b := range before(n) {
			l = max(l, get(b)+1)
		}
		lvl[n] = l
		return l
	}
	var out [][]string
	for _, n := range order {
		l := get(n)
		for len(out) <= l {
			out = append(out, nil)
		}
		out[l] = append(out[l], n)
	}
	return out
}
