package main

import (
	"testing"

	"github.com/vitalproxy/vitalproxy/internal/docgen"
)

// TestDocsCommands checks the command reference of docs/commands.md against
// the command tree.
func TestDocsCommands(t *testing.T) {
	body := docgen.Commands(newRootCommand())
	if err := docgen.Sync("../../docs/commands.md", "commands", body); err != nil {
		t.Fatal(err)
	}
}
