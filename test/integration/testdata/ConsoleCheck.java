import java.sql.Connection;
import java.sql.DatabaseMetaData;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.ResultSetMetaData;
import java.sql.SQLException;
import java.sql.Statement;
import java.util.Properties;

// ConsoleCheck connects to the operator console as a GUI tool would (the
// driver's connect-time settings, DatabaseMetaData), runs SHOW TENANTS
// through a Statement and a PreparedStatement (extended protocol), checks
// that a bad command gives an error and the session goes on, and prints
// what it saw. Arguments: url user password tenant-slug.
public class ConsoleCheck {
    public static void main(String[] args) throws Exception {
        Properties p = new Properties();
        p.setProperty("user", args[1]);
        p.setProperty("password", args[2]);
        p.setProperty("ApplicationName", "console-jdbc");
        try (Connection c = DriverManager.getConnection(args[0], p)) {
            DatabaseMetaData md = c.getMetaData();
            System.out.println("PRODUCT " + md.getDatabaseProductName() + " " + md.getDatabaseProductVersion());
            for (String mode : new String[] {"statement", "prepared"}) {
                ResultSet rs;
                Statement st = null;
                PreparedStatement ps = null;
                if (mode.equals("statement")) {
                    st = c.createStatement();
                    rs = st.executeQuery("SHOW TENANTS");
                } else {
                    ps = c.prepareStatement("SHOW TENANTS");
                    rs = ps.executeQuery();
                }
                ResultSetMetaData rm = rs.getMetaData();
                boolean found = false;
                while (rs.next()) {
                    for (int i = 1; i <= rm.getColumnCount(); i++) {
                        if (rm.getColumnName(i).equals("tenant") && args[3].equals(rs.getString(i))) {
                            found = true;
                        }
                    }
                }
                rs.close();
                if (st != null) st.close();
                if (ps != null) ps.close();
                System.out.println((found ? "FOUND " : "MISSING ") + mode + " " + args[3]);
            }
            try (Statement st = c.createStatement()) {
                st.executeQuery("SHOW NOTHING_SUCH");
                System.out.println("BADCMD accepted");
            } catch (SQLException e) {
                System.out.println("BADCMD " + e.getSQLState());
            }
            try (Statement st = c.createStatement(); ResultSet rs = st.executeQuery("SHOW VERSION")) {
                System.out.println(rs.next() ? "AFTER ok" : "AFTER empty");
            }
        }
    }
}
