package docgen

import (
	"fmt"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// Commands renders the command tree under root as Markdown: the root's
// persistent flags once as the global flags, then every command that is
// not hidden (depth first, in cobra's order) with its usage line, its
// descriptions and its own flags. Cobra's own help and completion commands
// are added at run time, so they are not in a tree that has not run.
func Commands(root *cobra.Command) string {
	var b strings.Builder
	b.WriteString("### Global flags\n\n")
	fmt.Fprintf(&b, "Every command takes these (the persistent flags of `%s`).\n\n", root.Name())
	flagTable(&b, root.PersistentFlags())
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		for _, sub := range c.Commands() {
			if sub.Hidden || sub.Deprecated != "" {
				continue
			}
			command(&b, sub)
			walk(sub)
		}
	}
	walk(root)
	return b.String()
}

func command(b *strings.Builder, c *cobra.Command) {
	fmt.Fprintf(b, "\n### `%s`\n\n", c.CommandPath())
	if c.Short != "" {
		b.WriteString(sentence(c.Short) + "\n\n")
	}
	b.WriteString("```text\n" + c.UseLine() + "\n")
	if long := strings.TrimSpace(c.Long); long != "" {
		b.WriteString("\n" + long + "\n")
	}
	b.WriteString("```\n")
	if c.HasAvailableSubCommands() {
		var names []string
		for _, sub := range c.Commands() {
			if sub.IsAvailableCommand() {
				names = append(names, "`"+sub.Name()+"`")
			}
		}
		fmt.Fprintf(b, "\nSubcommands: %s.\n", strings.Join(names, ", "))
	}
	// The command's own flags, persistent ones included, not those it
	// inherits.
	own := pflag.NewFlagSet(c.Name(), pflag.ContinueOnError)
	c.LocalFlags().VisitAll(func(f *pflag.Flag) {
		if c.InheritedFlags().Lookup(f.Name) == nil {
			own.AddFlag(f)
		}
	})
	if own.HasAvailableFlags() {
		b.WriteString("\n")
		flagTable(b, own)
	}
}

// flagTable renders the visible flags of fs, sorted by name.
func flagTable(b *strings.Builder, fs *pflag.FlagSet) {
	b.WriteString("| flag | type | default | meaning |\n|---|---|---|---|\n")
	fs.VisitAll(func(f *pflag.Flag) {
		if f.Hidden {
			return
		}
		name := "--" + f.Name
		if f.Shorthand != "" {
			name = "-" + f.Shorthand + ", " + name
		}
		def := f.DefValue
		switch {
		case f.Value.Type() == "bool" && def == "false",
			def == "", def == "[]":
			def = ""
		default:
			def = code(def)
		}
		fmt.Fprintf(b, "| %s | %s | %s | %s |\n", code(name), f.Value.Type(), def, prose(f.Usage, nil))
	})
}

// sentence capitalises s and ends it with a full stop.
func sentence(s string) string {
	s = strings.TrimSpace(s)
	if s == "" {
		return s
	}
	s = strings.ToUpper(s[:1]) + s[1:]
	if !strings.HasSuffix(s, ".") {
		s += "."
	}
	return s
}
