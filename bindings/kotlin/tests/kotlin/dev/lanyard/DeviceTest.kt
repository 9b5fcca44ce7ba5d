package dev.lanyard

import kotlinx.coroutines.CoroutineScope
import kotlinx.coroutines.Deferred
import kotlinx.coroutines.Dispatchers
import kotlinx.coroutines.async
import kotlinx.coroutines.runBlocking
import kotlinx.coroutines.withTimeout
import org.junit.jupiter.api.AfterAll
import org.junit.jupiter.api.BeforeAll
import org.junit.jupiter.api.Test
import org.junit.jupiter.api.TestInstance
import kotlin.test.assertEquals
import kotlin.test.assertFailsWith
import kotlin.test.assertTrue

/**
 * A JVM device ([lanyardDevice]) against a real mosquitto and `lanyard
 * twin`, driven by a [LanyardApp]: its desired-state decisions, commands
 * and telemetry are Kotlin lambdas.
 */
@TestInstance(TestInstance.Lifecycle.PER_CLASS)
class DeviceTest {
    private val peers = Peers("lanyard-kotlin-device")
    private lateinit var app: LanyardApp
    private lateinit var device: LanyardDevice
    private val id = "ly-020000000007"

    @BeforeAll
    fun start() = runBlocking {
        val port = Peers.freePort()
        peers.start("mosquitto", peers.mosquitto, "-p", "$port")
        peers.awaitPort(port)
        val broker = "mqtt://127.0.0.1:$port"
        peers.start("twin", peers.lanyard, "twin", "--broker", broker, "--state-dir", peers.path("twin"))
        device = lanyardDevice(broker, "02:00:00:00:00:07", peers.path("device")) {
            onDesired { path, value ->
                when {
                    path == listOf("target_c") && value is ShadowValue.Int && value.value > 30 ->
                        DesiredOutcome.Reached(ShadowValue.Int(30))
                    path == listOf("mode") && value == ShadowValue.Text("turbo") ->
                        DesiredOutcome.Rejected(RejectReason.OUT_OF_RANGE)
                    path == listOf("label") && value is ShadowValue.Text ->
                        DesiredOutcome.Reached(ShadowValue.Text(value.value.uppercase()))
                    else -> DesiredOutcome.Accepted
                }
            }
            command("add") { args ->
                val a = (args["a"] as? ShadowValue.Int)?.value ?: throw BadArgumentsException("a: an integer")
                val b = (args["b"] as? ShadowValue.Int)?.value ?: throw BadArgumentsException("b: an integer")
                mapOf("sum" to ShadowValue.Int(a + b))
            }
            command("explode") { throw IllegalStateException("the fuse blew") }
            commandLater("calibrate") { _ ->
                Thread {
                    Thread.sleep(400)
                    device.completeCommand(mapOf("offset" to ShadowValue.Float(0.5)))
                }.start()
            }
            telemetry { mapOf("load" to ShadowValue.Float(0.25), "disk" to ShadowValue.Nested(mapOf("free_mb" to ShadowValue.Int(512)))) }
        }
        assertEquals(id, device.deviceId())
        app = connectAppUrl(broker)
        running = scope.async { device.run() }
        peers.eventually { app.listDevices(null, 5_000).any { it.device == id && it.online } }
        // Telemetry every second (the fleet's shortest interval), not 30 s.
        val pushed = app.pushConfig(listOf(id), System.currentTimeMillis().toULong(), mapOf("telemetry_ms" to 1_000uL), 30_000)
        assertEquals(listOf(id), pushed.applied)
    }

    private val scope = CoroutineScope(Dispatchers.IO)
    private lateinit var running: Deferred<Unit>

    @AfterAll
    fun stop() {
        if (::running.isInitialized) {
            device.stop()
            // `run` returns once stopped.
            runBlocking { withTimeout(15_000) { running.await() } }
            assertFailsWith<LanyardException.BadInput> { runBlocking { device.run() } }
        }
        if (::app.isInitialized) app.close()
        peers.stopAll()
    }

    @Test
    fun desiredStateIsTheApplicationsToDecide(): Unit = runBlocking {
        val events = app.openEvents(listOf(id), 100u)
        app.setDesired(id, mapOf("target_c" to ShadowValue.Int(35), "mode" to ShadowValue.Text("turbo"),
            "label" to ShadowValue.Text("hall")))
        var refused: Map<String, String> = emptyMap()
        peers.eventually {
            val e = events.next(1_000)
            if (e is AppEvent.Reported && e.rejected.isNotEmpty()) refused = e.rejected
            val reported = app.getShadow(id, 2_000).reported
            refused.isNotEmpty() &&
                reported["target_c"] == ShadowValue.Int(30) && // clamped
                reported["label"] == ShadowValue.Text("HALL") // chosen by the device, reported later
        }
        assertEquals(setOf("mode"), refused.keys)
        assertTrue(refused["mode"]!!.contains("range"), refused.toString())
        assertEquals(null, app.getShadow(id, 2_000).reported["mode"])
    }

    @Test
    fun commandsAnswerWithResultsAndTheirErrors(): Unit = runBlocking {
        val sum = app.command(id, "add", mapOf("a" to ShadowValue.Int(2), "b" to ShadowValue.Int(3)), 10_000)
        assertEquals(AckStatus.SUCCEEDED, sum.status)
        assertEquals(ShadowValue.Int(5), sum.result!!["sum"])

        val bad = app.command(id, "add", mapOf("a" to ShadowValue.Text("two")), 10_000)
        assertEquals(AckStatus.REJECTED, bad.status)
        assertEquals("a: an integer", bad.detail)

        val blown = app.command(id, "explode", emptyMap(), 10_000)
        assertEquals(AckStatus.FAILED, blown.status)
        assertEquals("the fuse blew", blown.detail)

        // A command that finishes later: in progress, others refused as
        // busy meanwhile, then its result.
        val calibration = async { app.command(id, "calibrate", emptyMap(), 10_000) }
        kotlinx.coroutines.delay(150)
        val busy = app.command(id, "add", mapOf("a" to ShadowValue.Int(1), "b" to ShadowValue.Int(1)), 10_000)
        assertEquals(AckStatus.REJECTED, busy.status)
        assertEquals(AckReason.Busy, busy.reason)
        val calibrated = calibration.await()
        assertEquals(AckStatus.SUCCEEDED, calibrated.status)
        assertEquals(ShadowValue.Float(0.5), calibrated.result!!["offset"])

        val unknown = app.command(id, "fly", emptyMap(), 10_000)
        assertEquals(AckStatus.REJECTED, unknown.status)
        assertEquals(AckReason.UnknownCommand, unknown.reason)
    }

    @Test
    fun telemetryAndTheDevicesOwnReports(): Unit = runBlocking {
        val events = app.openEvents(listOf(id), 100u)
        device.report(mapOf("door" to ShadowValue.Text("open")))
        var telemetry: AppEvent.Telemetry? = null
        peers.eventually {
            val e = events.next(1_000)
            if (e is AppEvent.Telemetry) telemetry = e
            telemetry != null && app.getShadow(id, 2_000).reported["door"] == ShadowValue.Text("open")
        }
        assertEquals(ShadowValue.Float(0.25), telemetry!!.readings["load"])
        assertEquals(ShadowValue.Nested(mapOf("free_mb" to ShadowValue.Int(512))), telemetry!!.readings["disk"])
        assertFailsWith<LanyardException.BadInput> { device.report(mapOf("blob" to ShadowValue.Bytes(byteArrayOf(1)))) }
    }

    @Test
    fun badConfigurationIsRefusedBeforeAnythingRuns() {
        assertFailsWith<LanyardException.BadInput> { lanyardDevice("mqtt://127.0.0.1:1", "not-a-mac", peers.path("x")) {} }
        assertFailsWith<LanyardException.BadInput> { lanyardDevice("ftp://host", "02:00:00:00:00:08", peers.path("y")) {} }
        assertFailsWith<LanyardException.BadInput> {
            lanyardDevice("mqtt://127.0.0.1:1", "02:00:00:00:00:09", peers.path("z"), speed = 0.0) {}
        }
    }
}
