// Package docgen renders the generated parts of the reference documentation
// under docs/ from the code they describe, so that no configuration key,
// command, flag or metric goes undocumented:
//
//   - the configuration keys of docs/configuration.md from the config.Config
//     struct (key names from its mapstructure tags, types, the defaults
//     config.Load applies, descriptions from the fields' doc comments);
//   - the command reference of docs/commands.md from the cobra command tree;
//   - the metrics of docs/metrics.md from the registry of a running proxy;
//   - the metrics of docs/topology.md from the registry of a running
//     topology checker.
//
// Each part sits in its document between marker lines
//
//	<!-- BEGIN GENERATED: name ... -->
//	<!-- END GENERATED: name -->
//
// with hand-written text around it. Tests in the packages that own the
// code (internal/docgen for the configuration, cmd/vitalproxy for the
// commands, test/monitoring and proxy/topology for the metrics) compare each part with what
// the code produces and fail on any difference. Regenerate them with
//
//	go generate ./internal/docgen
//
// which runs those tests with VITALPROXY_UPDATE_DOCS=1, making them write
// the documents instead (the metrics need PostgreSQL's server binaries, as
// every PostgreSQL-backed test does).
package docgen

//go:generate env VITALPROXY_UPDATE_DOCS=1 go test -count=1 -run ^TestDocs ../../internal/docgen ../../cmd/vitalproxy ../../test/monitoring ../../proxy/topology
