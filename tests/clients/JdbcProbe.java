import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.nio.charset.StandardCharsets;
import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.SQLException;
import java.sql.Statement;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.Properties;

import org.postgresql.PGStatement;
import org.postgresql.core.BaseConnection;

/**
 * Drives the PostgreSQL JDBC driver (pgjdbc) the way an application would, for tests/e2e/test_jdbc_client.py.
 *
 * Usage: java -cp postgresql.jar:DIR JdbcProbe JDBC_URL < steps
 * The user and password come from the environment (PGW_USER, PGW_PASSWORD) so the token never shows in `ps`.
 * Each stdin line is one step, fields separated by tabs:
 *   autocommit  on|off
 *   execute     SQL                      java.sql.Statement.execute
 *   prepared    SQL  [param ...]         one PreparedStatement per SQL text, reused, so pgjdbc's prepareThreshold
 *                                        counts its executions and switches it to a named server-side statement
 *   commit | rollback
 *   cancel      SQL  DELAY_MS            execute SQL; another thread calls Statement.cancel() after DELAY_MS
 * A refused login prints {"step": "connect", "ok": false, "sqlstate", "message"} and exits with status 2.
 * Otherwise it prints one JSON object per step: {"step", "ok", "value" (first column of the first row, or the update count),
 * "sqlstate", "message", "serverPrepare", "tx" (IDLE, OPEN or FAILED after the step)}.
 */
public final class JdbcProbe {
    private JdbcProbe() {
    }

    public static void main(String[] args) throws Exception {
        Properties props = new Properties();
        props.setProperty("user", System.getenv("PGW_USER"));
        props.setProperty("password", System.getenv("PGW_PASSWORD"));
        Map<String, PreparedStatement> prepared = new HashMap<>();
        BufferedReader in = new BufferedReader(new InputStreamReader(System.in, StandardCharsets.UTF_8));
        Connection opened;
        try {
            opened = DriverManager.getConnection(args[0], props);
        } catch (SQLException e) {  // a refused login: reported like a step, exit status 2
            Map<String, Object> out = new HashMap<>();
            out.put("step", "connect");
            out.put("ok", false);
            out.put("sqlstate", e.getSQLState());
            out.put("message", e.getMessage());
            System.out.println(json(out));
            System.exit(2);
            return;
        }
        try (Connection conn = opened) {
            String line;
            while ((line = in.readLine()) != null) {
                if (line.isEmpty()) {
                    continue;
                }
                String[] fields = line.split("\t", -1);
                Map<String, Object> out = new HashMap<>();
                out.put("step", fields[0]);
                try {
                    run(conn, fields, prepared, out);
                    out.put("ok", true);
                } catch (SQLException e) {
                    out.put("ok", false);
                    out.put("sqlstate", e.getSQLState());
                    out.put("message", e.getMessage());
                }
                out.put("tx", conn.unwrap(BaseConnection.class).getTransactionState().name());
                System.out.println(json(out));
                System.out.flush();
            }
        }
    }

    private static void run(Connection conn, String[] f, Map<String, PreparedStatement> prepared,
                            Map<String, Object> out) throws SQLException, InterruptedException {
        switch (f[0]) {
            case "autocommit" -> conn.setAutoCommit(f[1].equals("on"));
            case "commit" -> conn.commit();
            case "rollback" -> conn.rollback();
            case "execute" -> {
                try (Statement st = conn.createStatement()) {
                    out.put("value", outcome(st, st.execute(f[1])));
                }
            }
            case "prepared" -> {
                PreparedStatement ps = prepared.get(f[1]);
                if (ps == null) {
                    ps = conn.prepareStatement(f[1]);
                    prepared.put(f[1], ps);
                }
                for (int i = 2; i < f.length; i++) {
                    ps.setString(i - 1, f[i]);
                }
                out.put("serverPrepare", ps.unwrap(PGStatement.class).isUseServerPrepare());
                out.put("value", outcome(ps, ps.execute()));
            }
            case "cancel" -> {
                try (Statement st = conn.createStatement()) {
                    long delay = Long.parseLong(f[2]);
                    Thread canceller = new Thread(() -> {
                        try {
                            Thread.sleep(delay);
                            st.cancel();
                        } catch (InterruptedException | SQLException e) {
                            System.err.println("cancel failed: " + e);
                        }
                    });
                    canceller.start();
                    try {
                        out.put("value", outcome(st, st.execute(f[1])));
                    } finally {
                        canceller.join();
                    }
                }
            }
            default -> throw new IllegalArgumentException("unknown step: " + f[0]);
        }
    }

    private static Object outcome(Statement st, boolean hasResultSet) throws SQLException {
        if (!hasResultSet) {
            return st.getUpdateCount();
        }
        try (ResultSet rs = st.getResultSet()) {
            return rs.next() ? rs.getString(1) : null;
        }
    }

    private static String json(Object value) {
        if (value == null) {
            return "null";
        }
        if (value instanceof Boolean || value instanceof Number) {
            return value.toString();
        }
        if (value instanceof Map<?, ?> map) {
            List<String> parts = new ArrayList<>();
            for (Map.Entry<?, ?> e : map.entrySet()) {
                parts.add(json(e.getKey().toString()) + ":" + json(e.getValue()));
            }
            return "{" + String.join(",", parts) + "}";
        }
        StringBuilder sb = new StringBuilder("\"");
        for (char c : value.toString().toCharArray()) {
            if (c == '"' || c == '\\') {
                sb.append('\\').append(c);
            } else if (c < 0x20) {
                sb.append(String.format("\\u%04x", (int) c));
            } else {
                sb.append(c);
            }
        }
        return sb.append('"').toString();
    }
}
