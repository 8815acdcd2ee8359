package broker

import (
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// threadSafeWrappers are the functions that return a connection on which
// paho.golang writes whole packets (a sync.Locker, see tls_stress_test.go).
var threadSafeWrappers = map[string]bool{
	"NewThreadSafeConn": true, // packets.NewThreadSafeConn
	"wrapConn":          true, // this package's tests
	"newLockedConn":     true, // internal/uplink
}

// TestPahoTLSConnsAreThreadSafe keeps the "TLS stall" from coming back: every
// paho.ClientConfig in the repository whose function dials TLS itself
// (tls.Dial, tls.DialWithDialer, tls.Client) must hand paho a connection
// through one of threadSafeWrappers. A raw *tls.Conn lets paho's pinger
// write a PINGREQ between the fixed header and the body of a PUBLISH (the
// broker then refuses a malformed packet and the publisher waits for a PUBACK
// that never comes): TestCertificateIdentity failed that way about once in
// 50 runs under load before its connection was wrapped.
func TestPahoTLSConnsAreThreadSafe(t *testing.T) {
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, "go.mod")); err != nil {
		t.Fatalf("repository root not found from %s: %v", root, err)
	}
	fset := token.NewFileSet()
	checked := 0
	err = filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			switch d.Name() {
			case "third_party", "testdata", "node_modules", ".git", "dist":
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(path, ".go") {
			return nil
		}
		src, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		if !strings.Contains(string(src), "paho.ClientConfig{") {
			return nil
		}
		f, err := parser.ParseFile(fset, path, src, 0)
		if err != nil {
			return err
		}
		for _, bad := range rawTLSPahoConns(f) {
			t.Errorf("%s: paho.ClientConfig gets a connection its function dialled with crypto/tls, not wrapped in packets.NewThreadSafeConn", fset.Position(bad))
		}
		checked++
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if checked == 0 {
		t.Fatal("no file with a paho.ClientConfig found: the scan is broken")
	}
}

// rawTLSPahoConns returns the positions of paho.ClientConfig literals whose
// Conn is not a threadSafeWrappers call while their innermost enclosing
// function calls tls.Dial, tls.DialWithDialer or tls.Client.
func rawTLSPahoConns(f *ast.File) []token.Pos {
	var bad []token.Pos
	var stack []ast.Node // enclosing function bodies
	ast.Inspect(f, func(n ast.Node) bool {
		if n == nil {
			stack = stack[:len(stack)-1]
			return true
		}
		stack = append(stack, n)
		lit, ok := n.(*ast.CompositeLit)
		if !ok || !isSelector(lit.Type, "paho", "ClientConfig") {
			return true
		}
		var fn ast.Node
		for i := len(stack) - 1; i >= 0 && fn == nil; i-- {
			switch stack[i].(type) {
			case *ast.FuncLit, *ast.FuncDecl:
				fn = stack[i]
			}
		}
		if fn == nil || !dialsTLS(fn) {
			return true
		}
		for _, e := range lit.Elts {
			kv, ok := e.(*ast.KeyValueExpr)
			if !ok {
				continue
			}
			if k, ok := kv.Key.(*ast.Ident); !ok || k.Name != "Conn" {
				continue
			}
			if !isWrapperCall(kv.Value) && !assignedFromWrapper(fn, kv.Value) {
				bad = append(bad, kv.Pos())
			}
		}
		return true
	})
	return bad
}

func isSelector(e ast.Expr, pkg, name string) bool {
	sel, ok := e.(*ast.SelectorExpr)
	if !ok {
		return false
	}
	id, ok := sel.X.(*ast.Ident)
	return ok && id.Name == pkg && sel.Sel.Name == name
}

func dialsTLS(fn ast.Node) bool {
	found := false
	ast.Inspect(fn, func(n ast.Node) bool {
		if c, ok := n.(*ast.CallExpr); ok {
			for _, name := range []string{"Dial", "DialWithDialer", "Client"} {
				if isSelector(c.Fun, "tls", name) {
					found = true
				}
			}
		}
		return !found
	})
	return found
}

// assignedFromWrapper reports whether e is a variable that fn assigns from a
// threadSafeWrappers call (lc := newLockedConn(nc, timeout)).
func assignedFromWrapper(fn ast.Node, e ast.Expr) bool {
	id, ok := e.(*ast.Ident)
	if !ok {
		return false
	}
	found := false
	ast.Inspect(fn, func(n ast.Node) bool {
		as, ok := n.(*ast.AssignStmt)
		if !ok || len(as.Lhs) != len(as.Rhs) {
			return !found
		}
		for i, l := range as.Lhs {
			if li, ok := l.(*ast.Ident); ok && li.Name == id.Name && isWrapperCall(as.Rhs[i]) {
				found = true
			}
		}
		return !found
	})
	return found
}

func isWrapperCall(e ast.Expr) bool {
	c, ok := e.(*ast.CallExpr)
	if !ok {
		return false
	}
	switch f := c.Fun.(type) {
	case *ast.Ident:
		return threadSafeWrappers[f.Name]
	case *ast.SelectorExpr:
		return threadSafeWrappers[f.Sel.Name]
	}
	return false
}
