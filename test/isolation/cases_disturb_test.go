package isolation_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

// disturbCases try to interfere with the victim's sessions.
func disturbCases() []attackCase {
	return []attackCase{
		{name: "notify-into-victim-channel", category: "disturb", level: levelSQL, run: caseNotifyInto, openDirectOnly: true,
			expectOpen: "LISTEN/NOTIFY channels are database-wide: any session can NOTIFY a channel another tenant " +
				"listens on (NOTIFY and pg_notify need no privilege, and no privilege governs them); the proxy's " +
				"per-tenant channel namespace closes it"},
		{name: "listen-on-victim-channel", category: "disturb", level: levelSQL, run: caseListenOn, openDirectOnly: true,
			expectOpen: "LISTEN/NOTIFY channels are database-wide: any session can LISTEN on another tenant's " +
				"channel and read its payloads (LISTEN is a statement, not a function: no privilege governs it); " +
				"the proxy's per-tenant channel namespace closes it"},
		{name: "notify-around-the-proxy", category: "disturb", level: levelSQL, run: caseNotifyAround, openDirectOnly: true,
			expectOpen: "LISTEN and NOTIFY run as dynamic SQL in DO blocks, out of the proxy's sight, reach any " +
				"session; the proxy drops every notification outside the client's namespace"},
		{name: "advisory-locks", category: "disturb", level: levelSQL, run: caseAdvisoryLocks},
		{name: "agent-quota-lock", category: "disturb", level: levelSQL, run: caseQuotaLock},
		{name: "cancel-terminate-backend", category: "disturb", level: levelSQL, run: caseSignalBackend},
		{name: "lock-table", category: "disturb", level: levelSQL, run: caseLockTable},
		{name: "lock-rows-shared-with-attacker", category: "disturb", level: levelSQL, run: caseSharedRowLocks},
	}
}

func caseNotifyInto(ctx context.Context, e *env) error {
	vc, ac, err := e.victimAndAttacker(ctx)
	if err != nil {
		return err
	}
	ch := "iso_" + strings.ToLower(e.vic.label) + "_" + randomHex(4)
	if _, err := vc.Exec(ctx, "LISTEN "+ch); err != nil {
		return err
	}
	if err := selfNotify(ctx, vc, ch); err != nil {
		return fmt.Errorf("positive control: %w", err)
	}
	if _, err := ac.Exec(ctx, "NOTIFY "+ch+", 'iso-from-attacker'"); err != nil {
		if sqlState(err) == "42501" {
			return nil
		}
		return err
	}
	if _, err := ac.Exec(ctx, "SELECT pg_notify($1, 'iso-from-attacker-2')", ch); err != nil && sqlState(err) != "42501" {
		return err
	}
	wctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	n, err := vc.WaitForNotification(wctx)
	if err != nil {
		if errors.Is(err, context.DeadlineExceeded) || wctx.Err() != nil {
			return nil
		}
		return err
	}
	return open("the victim's session received the attacker's notification on %s: %q", n.Channel, n.Payload)
}

// selfNotify checks that conn, listening on ch, receives a notification it
// sends itself: the probe can see a notification arrive.
func selfNotify(ctx context.Context, conn *pgx.Conn, ch string) error {
	if _, err := conn.Exec(ctx, "SELECT pg_notify($1, 'iso-self')", ch); err != nil {
		return err
	}
	wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	n, err := conn.WaitForNotification(wctx)
	if err != nil {
		return fmt.Errorf("own notification on %s: %w", ch, err)
	}
	if n.Payload != "iso-self" {
		return fmt.Errorf("own notification on %s: payload %q", ch, n.Payload)
	}
	return nil
}

func caseListenOn(ctx context.Context, e *env) error {
	vc, ac, err := e.victimAndAttacker(ctx)
	if err != nil {
		return err
	}
	ch := "iso_" + strings.ToLower(e.vic.label) + "_" + randomHex(4)
	if _, err := ac.Exec(ctx, "LISTEN "+ch); err != nil {
		if sqlState(err) == "42501" {
			return nil
		}
		return err
	}
	if err := selfNotify(ctx, ac, ch); err != nil {
		return fmt.Errorf("positive control: %w", err)
	}
	if _, err := vc.Exec(ctx, "SELECT pg_notify($1, $2)", ch, e.vic.prefix+"-payload"); err != nil {
		return err
	}
	wctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	n, err := ac.WaitForNotification(wctx)
	if err != nil {
		if wctx.Err() != nil {
			return nil
		}
		return err
	}
	return open("the attacker received the victim's notification on %s: %q", n.Channel, n.Payload)
}

func caseAdvisoryLocks(ctx context.Context, e *env) error {
	vc, err := e.victim(ctx)
	if err != nil {
		return err
	}
	defer rollback(vc)
	ac, err := e.attacker(ctx)
	if err != nil {
		return err
	}
	var f findings
	// An application key the victim holds (when tenants may use advisory
	// locks at all).
	_, err = vc.Exec(ctx, "SELECT pg_advisory_lock(4242, 17)")
	switch {
	case sqlState(err) == "42501":
	case err != nil:
		return err
	default:
		got, err := scalar[bool](ctx, ac, "SELECT pg_try_advisory_lock(4242, 17)")
		switch {
		case sqlState(err) == "42501":
		case err != nil:
			return err
		case !got:
			f.add("the attacker sees (and can wait on) the victim's advisory lock (4242, 17)")
		default:
			_, _ = ac.Exec(ctx, "SELECT pg_advisory_unlock(4242, 17)")
		}
		if _, err := vc.Exec(ctx, "SELECT pg_advisory_unlock(4242, 17)"); err != nil {
			return err
		}
	}
	// The key the agent quota once used (1986817140, hashtext(tenant id))
	// must no longer stall the victim's inserts.
	_, err = ac.Exec(ctx, "SELECT pg_advisory_lock(1986817140, hashtext($1))", e.vic.id)
	switch {
	case sqlState(err) == "42501":
		return f.result()
	case err != nil:
		return err
	}
	defer func() { _, _ = ac.Exec(context.WithoutCancel(ctx), "SELECT pg_advisory_unlock_all()") }()
	if err := f.addErr(victimInsertProceeds(ctx, vc, "the attacker holds the old agent-quota advisory key")); err != nil {
		return err
	}
	return f.result()
}

// victimInsertProceeds checks that the victim can insert an agent within
// a short lock_timeout (rolled back), and reports a stall as open.
func victimInsertProceeds(ctx context.Context, vc *pgx.Conn, while string) error {
	if _, err := vc.Exec(ctx, "BEGIN; SET LOCAL lock_timeout = '300ms'"); err != nil {
		return err
	}
	defer rollback(vc)
	_, err := vc.Exec(ctx, "INSERT INTO public.agents (name) VALUES ('iso-quota')")
	switch {
	case err == nil:
		return nil
	case sqlState(err) == "55P03":
		return open("the victim's agent insert stalls while %s", while)
	default:
		return err
	}
}

// caseQuotaLock: the agent quota serialises a tenant's inserts on a
// private row lock taken by a BEFORE trigger, which runs before RLS's WITH
// CHECK. An attacker inserting a row in the victim's name (refused) inside
// a transaction it then leaves open must not hold the victim's quota lock.
func caseQuotaLock(ctx context.Context, e *env) error {
	vc, err := e.victim(ctx)
	if err != nil {
		return err
	}
	defer rollback(vc)
	// Positive control: the victim's own pending insert does make a second
	// victim session wait, so a stall would be seen.
	vc2, err := e.victim(ctx)
	if err != nil {
		return err
	}
	defer rollback(vc2)
	if _, err := vc2.Exec(ctx, "BEGIN; INSERT INTO public.agents (name) VALUES ('iso-quota-holder')"); err != nil {
		return err
	}
	if err := victimInsertProceeds(ctx, vc, "its own other session inserts"); !isOpen(err) {
		return fmt.Errorf("positive control: the quota lock did not serialise the victim's own inserts: %v", err)
	}
	rollback(vc2)
	ac, err := e.attacker(ctx)
	if err != nil {
		return err
	}
	defer rollback(ac)
	var f findings
	for _, q := range []string{
		"INSERT INTO public.agents (name, tenant_id) VALUES ('iso-quota', '" + e.vic.id + "')",
		"INSERT INTO public.agents (id, name) VALUES ('" + e.vic.privateIDs["agents"][0] + "', 'iso') ON CONFLICT (id) DO UPDATE SET deleted_at = NULL",
		"UPDATE public.agents SET tenant_id = '" + e.vic.id + "' WHERE tenant_id = '" + e.atk.id + "'",
	} {
		// The failed statement leaves the transaction open (aborted), with
		// whatever locks it took.
		if _, err := ac.Exec(ctx, "BEGIN"); err != nil {
			return err
		}
		if _, err := ac.Exec(ctx, q); err == nil {
			f.add("%q was accepted", oneLine(q))
		} else if sqlState(err) != "42501" {
			return fmt.Errorf("%s: %w", q, err)
		}
		if err := f.addErr(victimInsertProceeds(ctx, vc, "the attacker's transaction that tried "+oneLine(q)+" is open")); err != nil {
			return err
		}
		rollback(ac)
	}
	return f.result()
}

func caseSignalBackend(ctx context.Context, e *env) error {
	vc, err := e.victim(ctx)
	if err != nil {
		return err
	}
	pid, err := backendPID(ctx, vc)
	if err != nil {
		return err
	}
	ac, err := e.attacker(ctx)
	if err != nil {
		return err
	}
	var f findings
	p := fmt.Sprint(pid)
	if err := f.addErr(deniedAll(ctx, ac, []string{
		"SELECT pg_cancel_backend(" + p + ")",
		"SELECT pg_terminate_backend(" + p + ")",
		"SELECT pg_terminate_backend(" + p + ", 100)",
		"SELECT pg_log_backend_memory_contexts(" + p + ")",
	})); err != nil {
		return err
	}
	member, err := scalar[bool](ctx, ac, "SELECT pg_has_role(session_user, 'pg_signal_backend', 'MEMBER')")
	if err != nil {
		return err
	}
	if member {
		f.add("the attacker is a member of pg_signal_backend")
	}
	if _, err := vc.Exec(ctx, "SELECT 1"); err != nil {
		f.add("the victim's session failed after the attempts: %v", err)
	}
	return f.result()
}

func caseLockTable(ctx context.Context, e *env) error {
	ac, err := e.attacker(ctx)
	if err != nil {
		return err
	}
	defer rollback(ac)
	vc, err := e.victim(ctx)
	if err != nil {
		return err
	}
	defer rollback(vc)
	var f findings
	if _, err := ac.Exec(ctx, "BEGIN"); err != nil {
		return err
	}
	var stmts []string
	for _, tbl := range append(resourceTables, "tenants", "user_tenants", "user_roles", "resource_sharing_audit") {
		for _, mode := range []string{"ACCESS EXCLUSIVE", "EXCLUSIVE", "SHARE ROW EXCLUSIVE", "SHARE", "SHARE UPDATE EXCLUSIVE"} {
			stmts = append(stmts, "LOCK TABLE public."+tbl+" IN "+mode+" MODE")
		}
	}
	if err := f.addErr(deniedAll(ctx, ac, stmts)); err != nil {
		return err
	}
	// The weak modes are allowed (INSERT and SELECT take them anyway); held
	// in an open transaction they must not stall the victim's work.
	var held []string
	for _, s := range []string{
		"LOCK TABLE public.agents, public.tools, public.prompts, public.workflows IN ROW EXCLUSIVE MODE",
		"LOCK TABLE public.tenants, public.user_tenants IN ROW SHARE MODE",
		"LOCK TABLE public.resource_sharing_audit IN ACCESS SHARE MODE",
	} {
		if _, err := ac.Exec(ctx, "SAVEPOINT iso_lock"); err != nil {
			return err
		}
		if _, err := ac.Exec(ctx, s); err == nil {
			held = append(held, s)
			if _, err := ac.Exec(ctx, "RELEASE SAVEPOINT iso_lock"); err != nil {
				return err
			}
		} else if sqlState(err) != "42501" {
			return fmt.Errorf("%s: %w", s, err)
		} else if _, err := ac.Exec(ctx, "ROLLBACK TO SAVEPOINT iso_lock"); err != nil {
			return err
		}
	}
	if len(held) > 0 {
		e.note("tenant roles may take weak table locks: %s (they conflict only with DDL, which then queues every tenant)", strings.Join(held, "; "))
	}
	if _, err := ac.Exec(ctx, "SELECT * FROM public.agents FOR UPDATE"); err != nil {
		return err
	}
	if _, err := vc.Exec(ctx, "BEGIN; SET LOCAL lock_timeout = '500ms'"); err != nil {
		return err
	}
	for _, q := range []string{
		"SELECT count(*) FROM public.agents",
		"INSERT INTO public.agents (name) VALUES ('iso-lock')",
		"UPDATE public.tools SET description = description WHERE tenant_id = '" + e.vic.id + "'",
		"UPDATE public.user_tenants SET role = role WHERE tenant_id = '" + e.vic.id + "'",
		"SELECT count(*) FROM public.mv_platform_shared_resources",
		"SELECT * FROM public.agents WHERE tenant_id = '" + e.vic.id + "' FOR UPDATE NOWAIT",
	} {
		if _, err := vc.Exec(ctx, q); err != nil {
			if sqlState(err) == "55P03" {
				f.add("the victim's %q stalled behind the attacker's locks", oneLine(q))
				if _, err := vc.Exec(ctx, "ROLLBACK; BEGIN; SET LOCAL lock_timeout = '500ms'"); err != nil {
					return err
				}
				continue
			}
			return fmt.Errorf("victim %s: %w", q, err)
		}
	}
	// Positive control: a lock that does conflict is detected by the same
	// probe.
	rollback(vc)
	rollback(ac)
	a, err := e.admin(ctx)
	if err != nil {
		return err
	}
	defer rollback(a)
	if _, err := a.Exec(ctx, "BEGIN; SET LOCAL lock_timeout = '5s'; LOCK TABLE public.workflows IN ACCESS EXCLUSIVE MODE"); err != nil {
		return err
	}
	if _, err := vc.Exec(ctx, "BEGIN; SET LOCAL lock_timeout = '200ms'"); err != nil {
		return err
	}
	if _, err := vc.Exec(ctx, "SELECT count(*) FROM public.workflows"); sqlState(err) != "55P03" {
		return fmt.Errorf("positive control: the victim's read under a conflicting lock: %v", err)
	}
	return f.result()
}

func caseSharedRowLocks(ctx context.Context, e *env) error {
	ac, err := e.attacker(ctx)
	if err != nil {
		return err
	}
	defer rollback(ac)
	vc, err := e.victim(ctx)
	if err != nil {
		return err
	}
	defer rollback(vc)
	id := e.vic.sharedPeerID
	var f findings
	n, err := scalar[int](ctx, ac, "SELECT count(*)::int FROM public.agents WHERE id = $1", id)
	if err != nil {
		return err
	}
	if n != 1 {
		return fmt.Errorf("positive control: the row the victim shares with the attacker is not visible to it")
	}
	if _, err := ac.Exec(ctx, "BEGIN"); err != nil {
		return err
	}
	for _, mode := range []string{"UPDATE", "NO KEY UPDATE", "SHARE", "KEY SHARE"} {
		n, err := scalar[int](ctx, ac, "SELECT count(*)::int FROM (SELECT id FROM public.agents WHERE id = $1 FOR "+mode+") s", id)
		if err != nil {
			if sqlState(err) == "42501" {
				continue
			}
			return err
		}
		if n != 0 {
			f.add("the attacker locked the victim's shared row FOR %s", mode)
		}
	}
	if _, err := vc.Exec(ctx, "BEGIN; SET LOCAL lock_timeout = '500ms'"); err != nil {
		return err
	}
	if _, err := vc.Exec(ctx, "UPDATE public.agents SET description = 'iso' WHERE id = $1", id); err != nil {
		if sqlState(err) == "55P03" {
			f.add("the victim's update of its own shared row stalled behind the attacker")
		} else {
			return err
		}
	}
	return f.result()
}

// caseNotifyAround names the channels where the proxy cannot see them:
// dynamic SQL in DO blocks, on both sides. The victim listens on a raw
// (unprefixed) channel, which the attacker then notifies raw, and the
// attacker listens raw on a channel the victim notifies raw. Neither may
// deliver anything across tenants. The positive control, first, shows the
// attacker's session receives its own notifications.
func caseNotifyAround(ctx context.Context, e *env) error {
	vc, ac, err := e.victimAndAttacker(ctx)
	if err != nil {
		return err
	}
	dyn := func(c *pgx.Conn, stmt string) error {
		_, err := c.Exec(ctx, "DO $$BEGIN EXECUTE "+quoteLit(stmt)+"; END$$")
		return err
	}
	own := "iso_own_" + randomHex(4)
	if _, err := ac.Exec(ctx, "LISTEN "+own); err != nil {
		return err
	}
	if err := selfNotify(ctx, ac, own); err != nil {
		return fmt.Errorf("positive control: %w", err)
	}
	vch := "iso_raw_v_" + randomHex(4)
	ach := "iso_raw_a_" + randomHex(4)
	if err := dyn(vc, "LISTEN "+vch); err != nil {
		return err
	}
	if err := dyn(ac, "LISTEN "+ach); err != nil {
		return err
	}
	if err := dyn(ac, "NOTIFY "+vch+", 'iso-from-attacker'"); err != nil {
		return err
	}
	if err := dyn(vc, "NOTIFY "+ach+", '"+e.vic.prefix+"-payload'"); err != nil {
		return err
	}
	var f findings
	for _, side := range []struct {
		who  string
		conn *pgx.Conn
	}{{"victim", vc}, {"attacker", ac}} {
		wctx, cancel := context.WithTimeout(ctx, time.Second)
		n, err := side.conn.WaitForNotification(wctx)
		cancel()
		switch {
		case err == nil:
			f.add("the %s's session received a notification on %s from the other tenant: %q", side.who, n.Channel, n.Payload)
		case wctx.Err() != nil:
		default:
			return err
		}
	}
	return f.result()
}
