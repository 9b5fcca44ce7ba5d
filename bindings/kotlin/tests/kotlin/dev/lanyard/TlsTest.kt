package dev.lanyard

import java.io.File
import kotlinx.coroutines.runBlocking
import org.junit.jupiter.api.AfterAll
import org.junit.jupiter.api.BeforeAll
import org.junit.jupiter.api.Test
import org.junit.jupiter.api.TestInstance
import kotlin.test.assertEquals
import kotlin.test.assertFailsWith
import kotlin.test.fail

/**
 * `connectAppUrl` over mutual TLS: a mosquitto that requires client
 * certificates, a `lanyard twin` and a `lanyard device` over `mqtts://`,
 * certificates made here with openssl (EC P-256, valid two days).
 */
@TestInstance(TestInstance.Lifecycle.PER_CLASS)
class TlsTest {
    private val device = "ly-020000000001" // lanyard device's default MAC
    private val peers = Peers("lanyard-kotlin-tls")
    private val dir = peers.dir
    private lateinit var url: String
    private lateinit var tls: TlsPaths

    private fun path(name: String) = peers.path(name)

    private fun openssl(vararg args: String) {
        val p = ProcessBuilder("openssl", *args).directory(dir).redirectErrorStream(true).start()
        val out = p.inputStream.bufferedReader().readText()
        if (p.waitFor() != 0) fail("openssl ${args.joinToString(" ")}: $out")
    }

    @BeforeAll
    fun startBrokerTwinHostAndDevice() = runBlocking {
        val ec = arrayOf("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes")
        openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=lanyard test CA")
        // The device's certificate names it: `lanyard device` refuses one
        // that names another identity.
        val names = listOf(
            Triple("broker", "broker", "DNS:localhost,IP:127.0.0.1"),
            Triple("client", "client", "DNS:client"),
            Triple("device", device, "DNS:$device"),
        )
        for ((name, cn, san) in names) {
            openssl("req", *ec, "-keyout", "$name.key", "-out", "$name.csr", "-subj", "/CN=$cn")
            File(dir, "$name.ext").writeText("subjectAltName=$san\n")
            openssl(
                "x509", "-req", "-in", "$name.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                "-out", "$name.pem", "-days", "2", "-extfile", "$name.ext",
            )
        }
        // mosquitto started as root reads its files as its own user.
        dir.setReadable(true, false)
        dir.setExecutable(true, false)
        File(dir, "broker.key").setReadable(true, false)
        val port = Peers.freePort()
        File(dir, "mosquitto.conf").writeText(
            "listener $port 127.0.0.1\nallow_anonymous true\n" +
                "cafile ${path("ca.pem")}\ncertfile ${path("broker.pem")}\nkeyfile ${path("broker.key")}\n" +
                "require_certificate true\n",
        )
        peers.start("mosquitto", peers.mosquitto, "-c", path("mosquitto.conf"))
        peers.awaitPort(port)
        url = "mqtts://localhost:$port"
        tls = TlsPaths(path("ca.pem"), path("client.pem"), path("client.key"))
        val certs = arrayOf("--ca", tls.ca, "--cert", tls.cert!!, "--key", tls.key!!)
        peers.start("twin", peers.lanyard, "twin", "--broker", url, "--state-dir", path("twin"), *certs)
        val deviceCerts = arrayOf("--ca", tls.ca, "--cert", path("device.pem"), "--key", path("device.key"))
        peers.start("device", peers.lanyard, "device", "--broker", url, "--state-dir", path("device"), *deviceCerts)
    }

    @AfterAll
    fun stopEverything() {
        peers.stopAll()
    }

    @Test
    fun anAppWithACertificateReachesTheDeviceOverTls() = runBlocking {
        val app = connectAppUrl(url, "kotlin-tls-app", false, 10_000, tls)
        try {
            peers.eventually { app.getShadow(device, 2_000).version >= 0uL }
            val blink = app.command(
                device, "blink_led",
                mapOf("count" to ShadowValue.Int(1), "period_ms" to ShadowValue.Int(100)), 10_000,
            )
            assertEquals(AckStatus.SUCCEEDED, blink.status)
        } finally {
            app.close()
        }
    }

    @Test
    fun withoutAClientCertificateTheBrokerRefuses() = runBlocking {
        assertFailsWith<LanyardException.Transport> {
            connectAppUrl(url, "kotlin-no-cert", false, 2_000, TlsPaths(tls.ca, null, null))
        }
        Unit
    }

    @Test
    fun badTlsInputIsRefusedBeforeConnecting() = runBlocking {
        assertFailsWith<LanyardException.BadInput> { connectAppUrl(url, "x", false, 1_000, null) }
        assertFailsWith<LanyardException.BadInput> {
            connectAppUrl(url, "x", false, 1_000, TlsPaths(path("missing.pem"), null, null))
        }
        assertFailsWith<LanyardException.BadInput> {
            connectAppUrl(url, "x", false, 1_000, TlsPaths(tls.ca, tls.cert, null))
        }
        assertFailsWith<LanyardException.BadInput> {
            // A key that is not the certificate's.
            connectAppUrl(url, "x", false, 1_000, TlsPaths(tls.ca, tls.cert, path("broker.key")))
        }
        Unit
    }
}
