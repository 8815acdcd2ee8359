package cli

import (
	"encoding/json"
	"io"
	"net/http"
	"strings"
)

// maxErrorAnswer bounds how much of an error answer is read.
const maxErrorAnswer = 64 << 10

// AnswerError returns the message of an HTTP API's error answer, for the
// clients of both binaries (the agent's local API, the fleet server's API,
// the OTA repository): the "error" member of a JSON body (the shape every
// Outpost API answers with, {"error": "..."}), else the body's text, else
// the status line. It reads at most 64 KiB of resp.Body and does not close it.
func AnswerError(resp *http.Response) string {
	b, _ := io.ReadAll(io.LimitReader(resp.Body, maxErrorAnswer))
	var e struct {
		Error string `json:"error"`
	}
	if json.Unmarshal(b, &e) == nil && e.Error != "" {
		return e.Error
	}
	if s := strings.TrimSpace(string(b)); s != "" {
		return s
	}
	return "HTTP " + resp.Status
}
