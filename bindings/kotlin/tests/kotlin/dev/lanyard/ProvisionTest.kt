package dev.lanyard

import java.io.File
import kotlinx.coroutines.runBlocking
import org.junit.jupiter.api.AfterAll
import org.junit.jupiter.api.BeforeAll
import org.junit.jupiter.api.Test
import org.junit.jupiter.api.TestInstance
import kotlin.test.assertEquals
import kotlin.test.assertFailsWith
import kotlin.test.assertTrue
import kotlin.test.fail

/**
 * An operator's app revokes a device provisioned by claim: the fleet's CA,
 * the broker's configuration, the provisioning service, a twin host and
 * the device all come from the `lanyard` command.
 */
@TestInstance(TestInstance.Lifecycle.PER_CLASS)
class ProvisionTest {
    private val device = "ly-0200000000f1"
    private val peers = Peers("lanyard-kotlin-provision")
    private val dir = peers.dir
    private lateinit var url: String
    private lateinit var ops: TlsPaths

    private fun path(name: String) = peers.path(name)

    /** Runs `lanyard args`, failing the test on a non-zero exit; its output. */
    private fun lanyard(vararg args: String): String {
        val p = ProcessBuilder(peers.lanyard, *args).redirectErrorStream(true).start()
        val out = p.inputStream.bufferedReader().readText()
        if (p.waitFor() != 0) fail("lanyard ${args.joinToString(" ")}: $out")
        return out
    }

    @BeforeAll
    fun startTheFleet() = runBlocking {
        val ca = path("ca")
        lanyard("ca", "init", "--dir", ca)
        lanyard("ca", "issue", "--dir", ca, "--name", "localhost", "--san", "localhost,127.0.0.1", "--out", path("broker"))
        for (name in listOf("lanyard-twin", "lanyard-provision", "lanyard-ops", "lanyard-claim-kt")) {
            lanyard("ca", "issue", "--dir", ca, "--name", name, "--out", path(name))
        }
        // mosquitto started as root reads its files, and writes its pid, as its own user.
        dir.setReadable(true, false)
        dir.setExecutable(true, false)
        File(dir, "broker.key").setReadable(true, false)
        val run = File(dir, "run").apply { mkdir(); setWritable(true, false); setExecutable(true, false) }
        File(dir, "acl").writeText(lanyard("acl", "--trusted", "lanyard-twin,lanyard-provision,lanyard-ops"))
        val port = Peers.freePort()
        val provisionPort = Peers.freePort()
        val pidFile = File(run, "mosquitto.pid").path
        File(dir, "mosquitto.conf").writeText(
            lanyard(
                "broker-config", "--port", "$port", "--bind", "127.0.0.1", "--ca", "$ca/ca.pem",
                "--cert", path("broker.pem"), "--key", path("broker.key"), "--acl", path("acl"),
                "--provision-port", "$provisionPort", "--crl", "$ca/crl.pem", "--pid-file", pidFile,
            ),
        )
        peers.start("mosquitto", peers.mosquitto, "-c", path("mosquitto.conf"))
        peers.awaitPort(port)
        peers.awaitPort(provisionPort)
        url = "mqtts://localhost:$port"
        fun tls(who: String) = arrayOf("--broker", url, "--ca", "$ca/ca.pem", "--cert", path("$who.pem"), "--key", path("$who.key"))
        File(dir, "allow").writeText("02:00:00:00:00:f1\n")
        peers.start(
            "provision", peers.lanyard, "provision", "serve", *tls("lanyard-provision"), "--ca-dir", ca,
            "--allow", path("allow"), "--broker-pid-file", pidFile,
        )
        peers.eventually { File(dir, "provision.log").readText().contains("ready") }
        peers.start("twin", peers.lanyard, "twin", *tls("lanyard-twin"), "--state-dir", path("twin"))
        peers.start(
            "device", peers.lanyard, "device", "--broker", url, "--ca", "$ca/ca.pem", "--claim-cert",
            path("lanyard-claim-kt.pem"), "--claim-key", path("lanyard-claim-kt.key"), "--provision-port",
            "$provisionPort", "--mac", "02:00:00:00:00:f1", "--state-dir", path("device"),
        )
        ops = TlsPaths("$ca/ca.pem", path("lanyard-ops.pem"), path("lanyard-ops.key"))
    }

    @AfterAll
    fun stopEverything() {
        peers.stopAll()
    }

    @Test
    fun anOperatorRevokesADeviceProvisionedByClaimUnit() = runBlocking {
        val app = connectAppUrl(url, "lanyard-ops", false, 10_000, ops)
        try {
            peers.eventually { app.getShadow(device, 2_000).version >= 0uL }
            assertTrue(File(dir, "device.log").readText().contains("$device provisioned by claim"))
            assertEquals(1uL, app.revoke(device, "compromised", true, 10_000))
            val refused = assertFailsWith<LanyardException.Rejected> {
                app.revoke("ly-0200000000ff", "compromised", false, 10_000)
            }
            assertTrue(refused.reason.contains("no certificate was issued"), refused.reason)
        } finally {
            app.close()
        }
        Unit
    }
}
