package demo.shop;

import com.fasterxml.jackson.databind.ObjectMapper;
import com.sun.net.httpserver.HttpExchange;
import com.sun.net.httpserver.HttpServer;
import java.io.IOException;
import java.io.OutputStream;
import java.net.InetSocketAddress;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.LinkedHashMap;
import java.util.Map;
import java.util.concurrent.Executors;
import java.util.concurrent.atomic.AtomicLong;
import org.apache.commons.lang3.StringUtils;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

/** A tiny shop front: GET / (who answered, which version), GET /healthz. */
public final class Main {
    private static final Logger LOG = LoggerFactory.getLogger(Main.class);
    private static final ObjectMapper JSON = new ObjectMapper();
    private static final AtomicLong SERVED = new AtomicLong();

    public static void main(String[] args) throws IOException {
        int port = Integer.parseInt(StringUtils.defaultIfBlank(System.getenv("PORT"), "8080"));
        String version = StringUtils.defaultIfBlank(System.getenv("VERSION"), Version.NAME);
        String host = Files.readString(Path.of("/proc/sys/kernel/hostname")).trim();
        HttpServer server = HttpServer.create(new InetSocketAddress(port), 128);
        server.createContext("/healthz", ex -> send(ex, 200, "text/plain", "ok\n"));
        server.createContext("/", ex -> {
            Map<String, Object> body = new LinkedHashMap<>();
            body.put("app", "hello-shop");
            body.put("version", version);
            body.put("pod", host);
            body.put("served", SERVED.incrementAndGet());
            send(ex, 200, "application/json", JSON.writeValueAsString(body) + "\n");
        });
        server.setExecutor(Executors.newFixedThreadPool(8));
        server.start();
        LOG.info("hello-shop {} listening on :{} as {}", version, port, host);
    }

    private static void send(HttpExchange ex, int status, String type, String text) throws IOException {
        byte[] bytes = text.getBytes(StandardCharsets.UTF_8);
        ex.getResponseHeaders().set("Content-Type", type);
        ex.sendResponseHeaders(status, bytes.length);
        try (OutputStream out = ex.getResponseBody()) {
            out.write(bytes);
        }
    }
}
