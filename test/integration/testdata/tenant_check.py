"""tenant_check checks, with psycopg2, that a client of the proxy sees its
own tenant and rows and never the other tenant's, the way a BI tool asks:
the catalogue first, then parameterised queries inside transactions.

Usage: python3 tenant_check.py DSN TENANT_ID OWN_AGENT FOREIGN_AGENT ROUNDS
"""
import sys

import psycopg2


def main():
    dsn, tenant, own, foreign, rounds = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
    conn = psycopg2.connect(dsn)
    cur = conn.cursor()
    cur.execute(
        "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public' AND table_name = %s",
        ("agents",),
    )
    if cur.fetchone()[0] != 1:
        sys.exit("information_schema does not list public.agents")
    conn.commit()
    for i in range(rounds):
        cur.execute(
            "SELECT current_tenant_id()::text, count(*) FILTER (WHERE name = %s),"
            " count(*) FILTER (WHERE name = %s) FROM agents",
            (own, foreign),
        )
        got, own_rows, foreign_rows = cur.fetchone()
        if got != tenant or own_rows != 1 or foreign_rows != 0:
            sys.exit(f"round {i}: tenant {got}, own rows {own_rows}, foreign rows {foreign_rows}")
        conn.commit()
    try:
        cur.execute("SELECT 1 / 0")
        sys.exit("division by zero succeeded")
    except psycopg2.errors.DivisionByZero:
        conn.rollback()
    # A server-side (named) cursor, as BI tools use for large results.
    named = conn.cursor(name="agents_cursor")
    named.itersize = 1
    named.execute("SELECT name FROM agents ORDER BY name")
    names = [row[0] for row in named]
    named.close()
    conn.commit()
    if own not in names or foreign in names:
        sys.exit(f"named cursor saw {names}")
    conn.close()
    print(f"OK {rounds}")


if __name__ == "__main__":
    main()
