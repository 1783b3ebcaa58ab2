package docgen_test

import (
	"reflect"
	"testing"

	"github.com/vitalproxy/vitalproxy/config"
	"github.com/vitalproxy/vitalproxy/internal/docgen"
)

// configKeys reads config.Config as the configuration reference shows it.
func configKeys(t *testing.T, defaults map[string]any) ([]docgen.Key, error) {
	t.Helper()
	docs, err := docgen.FieldDocs("../../config")
	if err != nil {
		t.Fatal(err)
	}
	return docgen.ConfigKeys(reflect.TypeFor[config.Config](), docgen.ConfigOptions{
		Docs:     docs,
		Defaults: defaults,
		Secret:   reflect.TypeFor[config.Secret](),
		MapKeys:  map[string]string{"tenants": "<slug>"},
	})
}

// TestDocsConfiguration checks the key table of docs/configuration.md
// against config.Config, its doc comments and the loader's defaults.
func TestDocsConfiguration(t *testing.T) {
	keys, err := configKeys(t, config.Defaults())
	if err != nil {
		t.Fatal(err)
	}
	if err := docgen.Sync("../../docs/configuration.md", "config", docgen.ConfigTable(keys)); err != nil {
		t.Fatal(err)
	}
}
