package dev.lanyard

import kotlinx.coroutines.Dispatchers
import kotlinx.coroutines.async
import kotlinx.coroutines.delay
import kotlinx.coroutines.runBlocking
import kotlinx.coroutines.flow.filter
import kotlinx.coroutines.flow.first
import kotlinx.coroutines.withTimeout
import kotlinx.coroutines.withTimeoutOrNull
import org.junit.jupiter.api.AfterAll
import org.junit.jupiter.api.BeforeAll
import org.junit.jupiter.api.Test
import org.junit.jupiter.api.TestInstance
import kotlin.test.assertEquals
import kotlin.test.assertFailsWith
import kotlin.test.assertTrue

/**
 * The bindings against real peers: a mosquitto broker, a `lanyard twin`
 * host and a `lanyard device` (a simulated std device), each its own
 * process, started here and stopped at the end.
 */
@TestInstance(TestInstance.Lifecycle.PER_CLASS)
class AppTest {
    private val device = "ly-020000000001" // lanyard device's default MAC
    private val peers = Peers("lanyard-kotlin")
    private var port = 0
    private lateinit var app: LanyardApp

    @BeforeAll
    fun startBrokerTwinHostAndDevice() = runBlocking {
        port = Peers.freePort()
        peers.start("mosquitto", peers.mosquitto, "-p", "$port")
        peers.awaitPort(port)
        val broker = "mqtt://127.0.0.1:$port"
        // The host takes writes from its operator only.
        peers.start(
            "twin", peers.lanyard, "twin", "--broker", broker, "--state-dir", peers.path("twin"),
            "--operators", "lanyard-kotlin-ops",
        )
        peers.start("device", peers.lanyard, "device", "--broker", broker, "--state-dir", peers.path("device"))
        app = connectApp("127.0.0.1", port, "kotlin-app", false, 10_000)
        app.asOperator("lanyard-kotlin-ops")
        // Registered once the twin host has a shadow for it.
        peers.eventually { app.getShadow(device, 2_000).version >= 0uL }
    }

    @AfterAll
    fun stopEverything() {
        if (::app.isInitialized) app.close()
        peers.stopAll()
    }

    @Test
    fun desiredStateReachesTheDeviceAndComesBackReported() = runBlocking {
        // A key may hold a dot: it is one name, not a path.
        val fan = ShadowValue.Nested(mapOf("speed" to ShadowValue.Float(0.5), "v1.2" to ShadowValue.Bool(true)))
        app.setDesired(device, mapOf("target_c" to ShadowValue.Int(22), "fan" to fan))
        peers.eventually {
            val shadow = app.getShadow(device, 2_000)
            shadow.inSync &&
                shadow.reported["target_c"] == ShadowValue.Int(22) &&
                shadow.reported["fan"] == fan
        }
        val shadow = app.getShadow(device, 2_000)
        assertEquals(ShadowValue.Int(22), shadow.desired["target_c"])
    }

    @Test
    fun writesSentWithoutAnAnswerReachTheShadowInOrder() = runBlocking<Unit> {
        for (i in 0 until 50) {
            app.sendDesired(device, mapOf("unanswered" to ShadowValue.Int(i.toLong())))
        }
        peers.eventually { app.getShadow(device, 2_000).desired["unanswered"] == ShadowValue.Int(49) }
        assertFailsWith<LanyardException.BadInput> {
            app.sendDesired(device, mapOf("" to ShadowValue.Int(1)))
        }
    }

    @Test
    fun theDeltaAndTheReportCanBeWatched() = runBlocking {
        app.setDesired(device, mapOf("mode" to ShadowValue.Text("eco")))
        var delta = false
        var reported = false
        val until = System.currentTimeMillis() + 20_000
        while (!(delta && reported) && System.currentTimeMillis() < until) {
            when (val e = app.nextEvent(1_000)) {
                is AppEvent.Delta ->
                    if (e.device == device && e.state["mode"] == ShadowValue.Text("eco")) delta = true
                is AppEvent.Reported ->
                    if (e.device == device && e.state["mode"] == ShadowValue.Text("eco")) reported = true
                else -> {}
            }
        }
        assertTrue(delta, "a delta with mode=eco was sent to the device")
        assertTrue(reported, "the device reported mode=eco")
    }

    @Test
    fun theOperatorListsPushesAConfigurationAndIsToldOfRefusals() = runBlocking {
        val listed = app.listDevices(null, 10_000).filter { it.device == device }
        assertEquals(1, listed.size)
        assertTrue(listed[0].online)
        val version = System.currentTimeMillis().toULong()
        val report = app.pushConfig(listOf(device), version, mapOf("telemetry_ms" to 45_000uL), 30_000)
        assertEquals(listOf(device), report.applied)
        val again = app.pushConfig(listOf(device), version, mapOf("telemetry_ms" to 45_000uL), 30_000)
        assertEquals(listOf(device), again.ignored)
        assertFailsWith<LanyardException.BadInput> {
            app.pushConfig(listOf(device), version + 1uL, mapOf("telemetry_ms" to 5uL), 30_000)
        }
        assertFailsWith<LanyardException.Rejected> { app.resolve(device, "target_c", true, 10_000) }
        Unit
    }

    @Test
    fun aCommandDoesNotWaitBehindAnotherCoroutinesNextEvent(): Unit = runBlocking(Dispatchers.Default) {
        val quiet = connectApp("127.0.0.1", port, "kotlin-concurrent", false, 10_000)
        // Nothing happens on this fleet meanwhile: the reader waits.
        val reader = async { quiet.nextEvent(5_000) }
        delay(200)
        val started = System.nanoTime()
        val blink = quiet.command(
            device, "blink_led",
            mapOf("count" to ShadowValue.Int(1), "period_ms" to ShadowValue.Int(50)), 10_000,
        )
        val tookMs = (System.nanoTime() - started) / 1_000_000
        assertEquals(AckStatus.SUCCEEDED, blink.status)
        assertTrue(tookMs < 2_000, "the command waited ${tookMs} ms behind nextEvent")
        assertTrue(reader.isActive, "the reader still waits")
        reader.cancel()
        // A cancelled reader gives the queue back at once.
        val started2 = System.nanoTime()
        withTimeoutOrNull(100) { quiet.nextEvent(10_000) }
        quiet.nextEvent(100)
        assertTrue((System.nanoTime() - started2) / 1_000_000 < 2_000, "the queue was given back")
    }

    @Test
    fun eventsAreAFlowPerDevice(): Unit = runBlocking(Dispatchers.Default) {
        val mode = "flow-${System.nanoTime()}"
        val other = async {
            withTimeoutOrNull(3_000) { app.events(listOf("ly-0a0000000009")).first() }
        }
        val reported = async {
            withTimeout(20_000) {
                app.events(listOf(device))
                    .filter { it is AppEvent.Reported && it.state["mode"] == ShadowValue.Text(mode) }
                    .first()
            }
        }
        delay(300) // both collectors subscribed
        app.setDesired(device, mapOf("mode" to ShadowValue.Text(mode)))
        assertEquals(device, (reported.await() as AppEvent.Reported).device)
        assertEquals(null, other.await(), "another device's flow stays empty")
        assertFailsWith<LanyardException.BadInput> { app.openEvents(null, 0u) }
    }

    @Test
    fun commandsAreAcknowledgedWithTheirFinalStatus() = runBlocking {
        val blink = app.command(
            device, "blink_led",
            mapOf("count" to ShadowValue.Int(2), "period_ms" to ShadowValue.Int(100)), 10_000,
        )
        assertEquals(AckStatus.SUCCEEDED, blink.status)
        val unknown = app.command(device, "self_destruct", emptyMap(), 10_000)
        assertEquals(AckStatus.REJECTED, unknown.status)
        assertEquals(AckReason.UnknownCommand, unknown.reason)
        val badArgs = app.command(device, "blink_led", mapOf("count" to ShadowValue.Int(0)), 10_000)
        assertEquals(AckReason.BadArguments, badArgs.reason)
        assertEquals("count: 1 to 100, period_ms: 50 to 5000", badArgs.detail)
    }

    @Test
    fun badInputIsRefusedBeforeAnythingIsSent() = runBlocking {
        assertFailsWith<LanyardException.BadInput> {
            app.setDesired(device, mapOf("" to ShadowValue.Int(1)))
        }
        assertFailsWith<LanyardException.BadInput> {
            app.setDesired(device, mapOf("a" to ShadowValue.Nested(mapOf("" to ShadowValue.Int(1)))))
        }
        assertFailsWith<LanyardException.BadInput> {
            // Deeper than a shadow nests.
            var deep: ShadowValue = ShadowValue.Int(1)
            repeat(40) { deep = ShadowValue.Nested(mapOf("k" to deep)) }
            app.setDesired(device, mapOf("deep" to deep))
        }
        assertFailsWith<LanyardException.BadInput> {
            // Not a CBOR array: the unsigned integer 1.
            app.setDesired(device, mapOf("list" to ShadowValue.Array(byteArrayOf(0x01))))
        }
        assertFailsWith<LanyardException.BadInput> { app.getShadow(device, -1) }
        assertFailsWith<LanyardException.BadInput> { connectApp("127.0.0.1", 70_000, "x", false, 1_000) }
        // Nothing of that reached the shadow.
        assertTrue(app.getShadow(device, 2_000).desired.keys.none { it.isEmpty() || it in setOf("list", "a", "deep") })
    }

    @Test
    fun onlyTheHostsOperatorWrites() = runBlocking {
        val eve = connectApp("127.0.0.1", port, "kotlin-eve", false, 10_000)
        try {
            eve.asOperator("lanyard-eve")
            val refused = assertFailsWith<LanyardException.Rejected> {
                eve.setDesired(device, mapOf("mode" to ShadowValue.Text("off")))
            }
            assertTrue(refused.reason.contains("lanyard-eve is not an operator"), refused.reason)
            assertFailsWith<LanyardException.BadInput> { eve.asOperator("a/b") }
        } finally {
            eve.close()
        }
        // A test returns nothing, or JUnit does not run it.
        Unit
    }

    @Test
    fun noBrokerIsATransportError() = runBlocking {
        assertFailsWith<LanyardException.Transport> {
            connectApp("127.0.0.1", Peers.freePort(), "nobody", false, 500)
        }
        Unit
    }

    @Test
    fun anUnknownDeviceHasNoShadow() = runBlocking {
        assertFailsWith<LanyardException.Rejected> { app.getShadow("ly-ffffffffffff", 5_000) }
        // A command to it is refused by the twin host at once, not left to
        // time out.
        val started = System.nanoTime()
        assertFailsWith<LanyardException.Rejected> {
            app.command("ly-ffffffffffff", "blink_led", emptyMap(), 10_000)
        }
        assertTrue((System.nanoTime() - started) / 1_000_000 < 5_000, "refused at once")
        Unit
    }
}
