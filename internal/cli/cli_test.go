package cli

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"strings"
	"testing"
)

func TestDispatch(t *testing.T) {
	var ran []string
	p := &Program{Name: "tool", Tagline: "Tool: does things.", Aliases: map[string]string{"--version": "version"}}
	for _, n := range []string{"version", "run"} {
		p.Register(&Command{Name: n, Summary: n + " it", Run: func(_ context.Context, args []string) int {
			ran = append(ran, n+":"+strings.Join(args, ","))
			return 7
		}})
	}
	tests := []struct {
		args     []string
		code     int
		out, err string
		ran      string
	}{
		{nil, ExitUsage, "", "Usage:\n  tool <command>", ""},
		{[]string{"help"}, ExitOK, "  run      run it\n  version  version it\n", "", ""},
		{[]string{"help", "run"}, 7, "", "", "run:--help"},
		{[]string{"--version"}, 7, "", "", "version:"},
		{[]string{"run", "-x", "y"}, 7, "", "", "run:-x,y"},
		{[]string{"nope"}, ExitUsage, "", `tool: unknown command "nope"`, ""},
	}
	for _, tt := range tests {
		ran = nil
		var o, e bytes.Buffer
		if code := p.Dispatch(tt.args, &o, &e); code != tt.code {
			t.Errorf("%q: exit %d, want %d", tt.args, code, tt.code)
		}
		if !strings.Contains(o.String(), tt.out) || !strings.Contains(e.String(), tt.err) {
			t.Errorf("%q: stdout %q stderr %q, want %q / %q", tt.args, o.String(), e.String(), tt.out, tt.err)
		}
		if got := strings.Join(ran, " "); got != tt.ran {
			t.Errorf("%q: ran %q, want %q", tt.args, got, tt.ran)
		}
	}
	defer func() {
		if recover() == nil {
			t.Error("a duplicate command registered without a panic")
		}
	}()
	p.Register(&Command{Name: "run"})
}

func TestAnswerError(t *testing.T) {
	for _, tc := range []struct{ status, body, want string }{
		{"400 Bad Request", `{"error":"labels: bad key \"-x\""}`, `labels: bad key "-x"`},
		{"502 Bad Gateway", "upstream down\n", "upstream down"},
		{"500 Internal Server Error", `{"error":""}`, `{"error":""}`},
		{"503 Service Unavailable", "", "HTTP 503 Service Unavailable"},
	} {
		resp := &http.Response{Status: tc.status, Body: io.NopCloser(strings.NewReader(tc.body))}
		if got := AnswerError(resp); got != tc.want {
			t.Errorf("%s %q: %q, want %q", tc.status, tc.body, got, tc.want)
		}
	}
}
