package isolation_test

import (
	"context"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"
)

// writeCases try to change the victim's rows or put rows in its name.
func writeCases() []attackCase {
	return []attackCase{
		{name: "insert-with-victim-tenant", category: "write", level: levelSQL, run: caseInsertVictim},
		{name: "copy-from-with-victim-tenant", category: "write", level: levelSQL, run: caseCopyFrom},
		{name: "update-delete-victim-rows", category: "write", level: levelSQL, run: caseUpdateDelete},
		{name: "truncate", category: "write", level: levelSQL, run: caseTruncate},
		{name: "merge", category: "write", level: levelSQL, run: caseMerge},
		{name: "upsert-on-conflict-update", category: "write", level: levelSQL, run: caseUpsert},
		{name: "move-own-row-to-victim", category: "write", level: levelSQL, run: caseMoveRow},
		{name: "share-victim-row", category: "write", level: levelSQL, run: caseShareVictimRow},
		{name: "publish-global-or-platform", category: "write", level: levelSQL, run: casePublishGlobal},
		{name: "read-only-capability", category: "write", level: levelSQL, run: caseReadOnly},
	}
}

// inTx runs fn in a transaction of conn that is always rolled back.
func inTx(ctx context.Context, conn *pgx.Conn, fn func() error) error {
	if _, err := conn.Exec(ctx, "BEGIN"); err != nil {
		return err
	}
	defer rollback(conn)
	return fn()
}

func caseInsertVictim(ctx context.Context, e *env) error {
	conn, err := e.attacker(ctx)
	if err != nil {
		return err
	}
	v := quoteLit(e.vic.id)
	var stmts []string
	for _, tbl := range resourceTables {
		stmts = append(stmts,
			"INSERT INTO public."+tbl+" (name, tenant_id) VALUES ('iso-forged', "+v+")",
			"INSERT INTO public."+tbl+" (name, tenant_id) SELECT 'iso-forged', "+v,
			"INSERT INTO public."+tbl+" (name, tenant_id) VALUES ('iso-orphan', NULL)",
			"INSERT INTO public."+tbl+" (name, tenant_id, is_shared, sharing_mode, shared_with) VALUES ('iso-forged', "+v+", true, 'tenants', ARRAY["+quoteLit(e.atk.id)+"::uuid])",
		)
	}
	stmts = append(stmts,
		"INSERT INTO public.user_tenants (user_id, tenant_id, role) VALUES ("+quoteLit(e.atk.userID)+", "+v+", 'owner')",
		"INSERT INTO public.user_roles (user_id, tenant_id, role) VALUES ("+quoteLit(e.atk.userID)+", "+v+", 'tenant_admin')",
		"INSERT INTO public.user_roles (user_id, role) VALUES ("+quoteLit(e.atk.userID)+", 'platform_admin')",
		"INSERT INTO public.resource_sharing_audit (tenant_id, resource_table, resource_id, action) VALUES ("+v+", 'agents', gen_random_uuid(), 'shared')",
		"INSERT INTO public.tenants (name, slug, type) VALUES ('iso', 'iso-forged', 'platform')",
	)
	return inTx(ctx, conn, func() error { return deniedAll(ctx, conn, stmts) })
}

func caseCopyFrom(ctx context.Context, e *env) error {
	conn, err := e.attacker(ctx)
	if err != nil {
		return err
	}
	var f findings
	for _, tbl := range append(resourceTables, "user_tenants") {
		for _, c := range []struct{ sql, data string }{
			{"COPY public." + tbl + " (name, tenant_id) FROM STDIN", "iso-copied\t" + e.vic.id + "\n"},
			{"COPY public." + tbl + " (name) FROM STDIN", "iso-copied\n"},
		} {
			sql, data := c.sql, c.data
			if tbl == "user_tenants" {
				sql = strings.Replace(sql, "(name", "(user_id", 1)
				data = strings.Replace(data, "iso-copied", e.atk.userID, 1)
			}
			_, err := conn.PgConn().CopyFrom(ctx, strings.NewReader(data), sql)
			switch {
			case err == nil:
				f.add("%q was accepted", sql)
			case sqlState(err) == "0A000" || sqlState(err) == "42501":
			default:
				return fmt.Errorf("%s: %w", sql, err)
			}
		}
	}
	return f.result()
}

func caseUpdateDelete(ctx context.Context, e *env) error {
	conn, err := e.attacker(ctx)
	if err != nil {
		return err
	}
	var f findings
	err = inTx(ctx, conn, func() error {
		for _, tbl := range resourceTables {
			ids := append(append([]string(nil), e.vic.privateIDs[tbl]...), e.vic.sharedPeerID)
			for _, q := range []struct {
				sql string
				arg any
			}{
				{"UPDATE public." + tbl + " SET name = 'iso-pwned', deleted_at = now() WHERE id = ANY ($1::uuid[])", ids},
				{"UPDATE public." + tbl + " SET description = 'iso-pwned' WHERE tenant_id = $1::uuid", e.vic.id},
			} {
				tag, err := conn.Exec(ctx, q.sql, q.arg)
				if err != nil {
					return fmt.Errorf("%s: %w", q.sql, err)
				}
				if tag.RowsAffected() != 0 {
					f.add("%q changed %d of the victim's rows", oneLine(q.sql), tag.RowsAffected())
				}
			}
			// Updating everything it can reach touches exactly its own rows.
			own, err := scalar[int64](ctx, conn, "SELECT count(*) FROM public."+tbl+" WHERE tenant_id = $1", e.atk.id)
			if err != nil {
				return err
			}
			tag, err := conn.Exec(ctx, "UPDATE public."+tbl+" SET description = description")
			if err != nil {
				return err
			}
			if tag.RowsAffected() != own {
				f.add("UPDATE of every reachable %s row touched %d rows, the attacker owns %d", tbl, tag.RowsAffected(), own)
			}
		}
		for _, q := range []string{
			"UPDATE public.user_tenants SET role = 'owner', status = 'suspended' WHERE user_id = $1::uuid",
			"UPDATE public.user_roles SET revoked_at = now() WHERE user_id = $1::uuid",
		} {
			tag, err := conn.Exec(ctx, q, e.vic.userID)
			if err != nil {
				return fmt.Errorf("%s: %w", q, err)
			}
			if tag.RowsAffected() != 0 {
				f.add("%q changed %d of the victim's rows", oneLine(q), tag.RowsAffected())
			}
		}
		var stmts []string
		for _, tbl := range append(resourceTables, "user_tenants", "user_roles", "resource_sharing_audit", "tenants") {
			stmts = append(stmts, "DELETE FROM public."+tbl)
		}
		stmts = append(stmts,
			"UPDATE public.tenants SET name = 'iso-pwned' WHERE id = "+quoteLit(e.vic.id),
			"UPDATE public.tenants SET status = 'suspended'",
			"UPDATE public.resource_sharing_audit SET action = 'changed'",
		)
		return f.addErr(deniedAll(ctx, conn, stmts))
	})
	if err != nil {
		return err
	}
	return f.result()
}

func caseTruncate(ctx context.Context, e *env) error {
	conn, err := e.attacker(ctx)
	if err != nil {
		return err
	}
	var stmts []string
	for _, tbl := range append(resourceTables, "user_tenants", "user_roles", "resource_sharing_audit", "tenants") {
		stmts = append(stmts, "TRUNCATE public."+tbl, "TRUNCATE ONLY public."+tbl+" CASCADE")
	}
	stmts = append(stmts, "TRUNCATE public.agents, public.tools, public.prompts, public.workflows RESTART IDENTITY CASCADE")
	return inTx(ctx, conn, func() error { return deniedAll(ctx, conn, stmts) })
}

func caseMerge(ctx context.Context, e *env) error {
	conn, err := e.attacker(ctx)
	if err != nil {
		return err
	}
	var f findings
	err = inTx(ctx, conn, func() error {
		ids := e.vic.privateIDs["agents"]
		q := `MERGE INTO public.agents a USING (SELECT unnest($1::uuid[]) AS id) s ON a.id = s.id
			WHEN MATCHED THEN UPDATE SET name = 'iso-merged'`
		tag, err := conn.Exec(ctx, q, ids)
		if err != nil {
			return fmt.Errorf("merge: %w", err)
		}
		if tag.RowsAffected() != 0 {
			f.add("MERGE ... WHEN MATCHED THEN UPDATE changed %d of the victim's private rows", tag.RowsAffected())
		}
		// The row the victim shares with the attacker matches (it is
		// visible) but may not be updated.
		if err := f.addErr(denied(ctx, conn, `MERGE INTO public.agents a USING (SELECT `+quoteLit(e.vic.sharedPeerID)+
			`::uuid AS id) s ON a.id = s.id WHEN MATCHED THEN UPDATE SET name = 'iso-merged'`)); err != nil {
			return err
		}
		return f.addErr(deniedAll(ctx, conn, []string{
			`MERGE INTO public.agents a USING (SELECT ` + quoteLit(ids[0]) + `::uuid AS id) s ON a.id = s.id WHEN MATCHED THEN DELETE`,
			`MERGE INTO public.user_tenants u USING (SELECT ` + quoteLit(e.vic.userID) + `::uuid AS id) s ON u.user_id = s.id WHEN MATCHED THEN DELETE`,
			`MERGE INTO public.agents a USING (SELECT ` + quoteLit(ids[0]) + `::uuid AS id) s ON a.id = s.id
				WHEN NOT MATCHED THEN INSERT (id, name, tenant_id) VALUES (s.id, 'iso', ` + quoteLit(e.vic.id) + `)`,
		}, "42501", "23505"))
	})
	if err != nil {
		return err
	}
	return f.result()
}

func caseUpsert(ctx context.Context, e *env) error {
	conn, err := e.attacker(ctx)
	if err != nil {
		return err
	}
	var stmts []string
	for _, tbl := range resourceTables {
		id := quoteLit(e.vic.privateIDs[tbl][0])
		stmts = append(stmts,
			"INSERT INTO public."+tbl+" (id, name) VALUES ("+id+", 'iso-upsert') ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name",
			"INSERT INTO public."+tbl+" (id, name) VALUES ("+id+", 'iso-upsert') ON CONFLICT (id) DO UPDATE SET is_shared = true, sharing_mode = 'tenants', shared_with = ARRAY["+quoteLit(e.atk.id)+"::uuid]",
		)
	}
	stmts = append(stmts,
		"INSERT INTO public.user_tenants (user_id, tenant_id) VALUES ("+quoteLit(e.vic.userID)+", "+quoteLit(e.vic.id)+") ON CONFLICT (user_id, tenant_id) DO UPDATE SET status = 'suspended'",
		"INSERT INTO public.user_tenants (id, user_id) VALUES ("+quoteLit(e.vic.privateIDs["user_tenants"][0])+", "+quoteLit(e.atk.userID)+") ON CONFLICT (id) DO UPDATE SET status = 'suspended'",
	)
	return inTx(ctx, conn, func() error { return deniedAll(ctx, conn, stmts, "42501") })
}

func caseMoveRow(ctx context.Context, e *env) error {
	conn, err := e.attacker(ctx)
	if err != nil {
		return err
	}
	v := quoteLit(e.vic.id)
	var stmts []string
	for _, tbl := range resourceTables {
		own := quoteLit(e.atk.privateIDs[tbl][0])
		stmts = append(stmts,
			"UPDATE public."+tbl+" SET tenant_id = "+v+" WHERE id = "+own,
			"UPDATE public."+tbl+" SET tenant_id = NULL WHERE id = "+own,
			"INSERT INTO public."+tbl+" (id, name) VALUES ("+own+", 'x') ON CONFLICT (id) DO UPDATE SET tenant_id = "+v,
		)
	}
	stmts = append(stmts,
		"UPDATE public.user_tenants SET tenant_id = "+v+" WHERE user_id = "+quoteLit(e.atk.userID),
		"UPDATE public.user_tenants SET user_id = "+quoteLit(e.vic.userID),
		"UPDATE public.user_roles SET tenant_id = "+v,
	)
	return inTx(ctx, conn, func() error { return deniedAll(ctx, conn, stmts) })
}

func caseShareVictimRow(ctx context.Context, e *env) error {
	conn, err := e.attacker(ctx)
	if err != nil {
		return err
	}
	a := quoteLit(e.atk.id)
	var f findings
	// Positive control: the row the victim shares with the attacker is
	// visible to it.
	n, err := scalar[int](ctx, conn, "SELECT count(*)::int FROM public.agents WHERE id = $1", e.vic.sharedPeerID)
	if err != nil {
		return err
	}
	if n != 1 {
		return fmt.Errorf("positive control: the row shared with the attacker is not visible to it")
	}
	err = inTx(ctx, conn, func() error {
		for _, tbl := range resourceTables {
			ids := e.vic.privateIDs[tbl]
			if tbl == "agents" {
				ids = append(append([]string(nil), ids...), e.vic.sharedPeerID)
			}
			for _, set := range []string{
				"is_shared = true, sharing_mode = 'tenants', shared_with = ARRAY[" + a + "::uuid]",
				"shared_with = shared_with || " + a + "::uuid",
				"is_shared = true, sharing_mode = 'global'",
				"is_shared = false, sharing_mode = 'private', shared_with = '{}'",
			} {
				q := "UPDATE public." + tbl + " SET " + set + " WHERE id = ANY ($1::uuid[])"
				tag, err := conn.Exec(ctx, q, ids)
				if err != nil {
					return fmt.Errorf("%s: %w", q, err)
				}
				if tag.RowsAffected() != 0 {
					f.add("%q changed %d of the victim's rows", oneLine(q), tag.RowsAffected())
				}
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	return f.result()
}

func casePublishGlobal(ctx context.Context, e *env) error {
	conn, err := e.attacker(ctx)
	if err != nil {
		return err
	}
	var stmts []string
	for _, tbl := range resourceTables {
		own := quoteLit(e.atk.privateIDs[tbl][0])
		stmts = append(stmts,
			"INSERT INTO public."+tbl+" (name, is_shared, sharing_mode) VALUES ('iso-global', true, 'global')",
			"INSERT INTO public."+tbl+" (name, resource_type) VALUES ('iso-platform', 'platform')",
			"UPDATE public."+tbl+" SET is_shared = true, sharing_mode = 'global' WHERE id = "+own,
			"UPDATE public."+tbl+" SET resource_type = 'platform' WHERE id = "+own,
		)
	}
	return inTx(ctx, conn, func() error { return deniedAll(ctx, conn, stmts) })
}

func caseReadOnly(ctx context.Context, e *env) error {
	conn, err := e.connect(ctx, e.atk, userRO)
	if err != nil {
		return err
	}
	var stmts []string
	for _, tbl := range resourceTables {
		stmts = append(stmts,
			"INSERT INTO public."+tbl+" (name) VALUES ('iso-ro')",
			"UPDATE public."+tbl+" SET description = description",
			"SELECT * FROM public."+tbl+" FOR UPDATE",
		)
	}
	stmts = append(stmts, "SET ROLE vital_tenant_writer", "INSERT INTO public.user_tenants (user_id) VALUES ("+quoteLit(e.atk.userID)+")")
	return inTx(ctx, conn, func() error {
		if err := tryAll(ctx, conn, "SET LOCAL default_transaction_read_only = off", "SET LOCAL transaction_read_only = off"); err != nil {
			return err
		}
		return deniedAll(ctx, conn, stmts)
	})
}
