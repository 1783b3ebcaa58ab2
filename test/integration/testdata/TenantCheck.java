// TenantCheck connects through the proxy with the PostgreSQL JDBC driver,
// one thread per client given on the command line, and checks on every
// execution of a server-side prepared statement that the client sees its
// own tenant and rows, never the other tenant's. It prints one line per
// client and exits non-zero on the first mismatch or error.
//
// Usage: java -cp postgresql.jar TenantCheck.java JDBC_URL ROUNDS
//            USER:PASSWORD:TENANT_ID:OWN_AGENT:FOREIGN_AGENT ...
import java.sql.Connection;
import java.sql.DatabaseMetaData;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.SQLException;
import java.util.ArrayList;
import java.util.List;
import java.util.Properties;
import java.util.concurrent.atomic.AtomicReference;

public class TenantCheck {
    public static void main(String[] args) throws Exception {
        String url = args[0];
        int rounds = Integer.parseInt(args[1]);
        AtomicReference<String> failure = new AtomicReference<>();
        List<Thread> threads = new ArrayList<>();
        for (int i = 2; i < args.length; i++) {
            String[] spec = args[i].split(":", 5);
            Thread th = new Thread(() -> {
                try {
                    run(url, rounds, spec[0], spec[1], spec[2], spec[3], spec[4]);
                } catch (Throwable e) {
                    failure.compareAndSet(null, spec[0] + ": " + e);
                }
            });
            threads.add(th);
            th.start();
        }
        for (Thread th : threads) {
            th.join();
        }
        if (failure.get() != null) {
            System.err.println("FAIL " + failure.get());
            System.exit(1);
        }
    }

    static void run(String url, int rounds, String user, String password, String tenant,
                    String own, String foreign) throws SQLException {
        Properties p = new Properties();
        p.setProperty("user", user);
        p.setProperty("password", password);
        p.setProperty("sslmode", "disable");
        // Named server-side statements from the first execution (the
        // driver's default waits for five).
        p.setProperty("prepareThreshold", "1");
        p.setProperty("ApplicationName", "tenant-check");
        try (Connection c = DriverManager.getConnection(url, p)) {
            // What BI tools ask first: the catalogue, through the driver.
            DatabaseMetaData md = c.getMetaData();
            try (ResultSet rs = md.getTables(null, "public", "agents", new String[] {"TABLE"})) {
                if (!rs.next()) {
                    throw new SQLException("getTables does not list public.agents");
                }
            }
            String sql = "SELECT current_tenant_id()::text, count(*) FILTER (WHERE name = ?),"
                + " count(*) FILTER (WHERE name = ?) FROM agents";
            try (PreparedStatement ps = c.prepareStatement(sql)) {
                for (int i = 0; i < rounds; i++) {
                    boolean inTransaction = i % 2 == 1;
                    c.setAutoCommit(!inTransaction);
                    ps.setString(1, own);
                    ps.setString(2, foreign);
                    try (ResultSet rs = ps.executeQuery()) {
                        if (!rs.next()) {
                            throw new SQLException("round " + i + ": no row");
                        }
                        String got = rs.getString(1);
                        int ownRows = rs.getInt(2), foreignRows = rs.getInt(3);
                        if (!tenant.equals(got) || ownRows != 1 || foreignRows != 0) {
                            throw new SQLException("round " + i + ": tenant " + got + ", own rows "
                                + ownRows + ", foreign rows " + foreignRows);
                        }
                    }
                    if (inTransaction) {
                        c.commit();
                    }
                }
            }
            c.setAutoCommit(true);
            // A cursor-based fetch, as BI tools page through results: in a
            // transaction the driver executes its portal one row at a time.
            c.setAutoCommit(false);
            List<String> names = new ArrayList<>();
            try (PreparedStatement ps = c.prepareStatement("SELECT name FROM agents ORDER BY name")) {
                ps.setFetchSize(1);
                try (ResultSet rs = ps.executeQuery()) {
                    while (rs.next()) {
                        names.add(rs.getString(1));
                    }
                }
            }
            c.commit();
            c.setAutoCommit(true);
            if (!names.contains(own) || names.contains(foreign) || names.size() < 2) {
                throw new SQLException("fetching one row at a time saw " + names);
            }
            // An error inside a transaction leaves the connection usable.
            c.setAutoCommit(false);
            try (PreparedStatement bad = c.prepareStatement("SELECT 1 / (? - 1)")) {
                bad.setInt(1, 1);
                bad.executeQuery().close();
                throw new SQLException("division by zero succeeded");
            } catch (SQLException e) {
                if (!"22012".equals(e.getSQLState())) {
                    throw e;
                }
            }
            c.rollback();
            c.setAutoCommit(true);
            try (PreparedStatement ps = c.prepareStatement("SELECT current_tenant_id()::text");
                 ResultSet rs = ps.executeQuery()) {
                if (!rs.next() || !tenant.equals(rs.getString(1))) {
                    throw new SQLException("after the rollback: wrong tenant");
                }
            }
            System.out.println("OK " + user + " " + rounds);
        }
    }
}
