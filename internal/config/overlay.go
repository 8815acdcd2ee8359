package config

import (
	"fmt"

	"gopkg.in/yaml.v3"
)

// Overlay is a YAML fragment merged over a base document (a fleet config
// fragment, docs/fleet.md). Name is used in error positions.
type Overlay struct {
	Name string
	Data []byte
}

// ParseOverlays is Parse for the base document with overlays merged over
// it, in order: mappings merge key by key, recursively; any other value (a
// scalar, a list, null) replaces the base's. The result is decoded,
// defaulted and validated as one document, and every problem's position
// names the document its value came from (the overlay's Name, line and
// column for a value an overlay set).
func ParseOverlays(name string, data []byte, overlays []Overlay, dst any, opts Options) error {
	root, err := parseNode(name, data)
	if err != nil {
		return err
	}
	files := map[*yaml.Node]string{}
	for _, o := range overlays {
		on, err := parseNode(o.Name, o.Data)
		if err != nil {
			return err
		}
		top := docContent(on)
		if top.Kind != yaml.MappingNode {
			return Problems{{Pos: Pos{File: o.Name, Line: top.Line, Column: top.Column}, Err: fmt.Errorf("%w: want a mapping of config sections, got %s", ErrWrongType, KindName(top))}}
		}
		mark(top, o.Name, files)
		base := docContent(root)
		if base.Kind != yaml.MappingNode {
			return Problems{{Pos: Pos{File: name, Line: base.Line, Column: base.Column}, Err: fmt.Errorf("%w: want a mapping, got %s", ErrWrongType, KindName(base))}}
		}
		mergeNode(base, top)
	}
	return decodeRoot(name, root, files, dst, opts)
}

func docContent(n *yaml.Node) *yaml.Node {
	if n.Kind == yaml.DocumentNode && len(n.Content) > 0 {
		return n.Content[0]
	}
	return n
}

// mark records the document of every node under n.
func mark(n *yaml.Node, file string, files map[*yaml.Node]string) {
	files[n] = file
	for _, c := range n.Content {
		mark(c, file, files)
	}
}

// mergeNode merges mapping over into mapping base.
func mergeNode(base, over *yaml.Node) {
	for i := 0; i+1 < len(over.Content); i += 2 {
		k, v := over.Content[i], over.Content[i+1]
		found := false
		for j := 0; j+1 < len(base.Content); j += 2 {
			if base.Content[j].Value != k.Value {
				continue
			}
			found = true
			bv := base.Content[j+1]
			if bv.Kind == yaml.AliasNode {
				bv = bv.Alias
			}
			if bv.Kind == yaml.MappingNode && v.Kind == yaml.MappingNode {
				// Merge into a copy: an alias target may be shared.
				cp := *bv
				cp.Content = append([]*yaml.Node(nil), bv.Content...)
				mergeNode(&cp, v)
				base.Content[j+1] = &cp
			} else {
				base.Content[j+1] = v
			}
			break
		}
		if !found {
			base.Content = append(base.Content, k, v)
		}
	}
}
