// Package observe is what the proxy tells its operators: the Prometheus
// collectors of package proxy and its engines (Metrics, on a private
// registry), the collector that reads a snapshot of the server-connection
// pool at scrape time, the /metrics, /healthz and /readyz endpoints
// (HTTP), the schema-version check behind /readyz, and the live isolation
// probe (Prober), which borrows backends of the probe tenants from the
// pool the way a client session would and checks what they see.
//
// It owns every series name, help text and label set; callers record
// events through methods that say what happened, and the tenant label is
// capped (tenants past the cap are reported as tenant="other"). Nothing
// here is on a per-message path: per-tenant series are resolved once per
// session (ForTenant) and per-transaction ones once per Metrics.
package observe
