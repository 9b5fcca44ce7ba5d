package dev.lanyard

import java.io.File
import java.net.InetSocketAddress
import java.net.ServerSocket
import java.net.Socket
import java.nio.file.Files
import kotlinx.coroutines.delay
import kotlin.test.fail

/**
 * The processes a test class runs beside the bindings (mosquitto, `lanyard
 * twin`, `lanyard device`), each logging to a file in one scratch
 * directory, and the waiting the tests do on them.
 */
class Peers(prefix: String) {
    /** Scratch directory: logs, state directories, certificates. */
    val dir: File = Files.createTempDirectory(prefix).toFile()
    private val processes = mutableListOf<Process>()

    /** `lanyard`, from `LANYARD_BIN`. */
    val lanyard: String
        get() = System.getenv("LANYARD_BIN")
            ?: error("set LANYARD_BIN to the lanyard binary (scripts/test-kotlin.sh does)")

    /** `mosquitto`, from `MOSQUITTO_BIN` or the PATH. */
    val mosquitto: String
        get() = System.getenv("MOSQUITTO_BIN") ?: "mosquitto"

    /** A path in [dir]. */
    fun path(name: String): String = File(dir, name).path

    /** Starts `command`, its output going to `name.log` in [dir]. */
    fun start(name: String, vararg command: String) {
        processes += ProcessBuilder(*command)
            .redirectErrorStream(true)
            .redirectOutput(File(dir, "$name.log"))
            .start()
    }

    /** Retries [check] until it holds, for at most [ms]. */
    suspend fun eventually(ms: Long = 20_000, check: suspend () -> Boolean) {
        val until = System.currentTimeMillis() + ms
        while (System.currentTimeMillis() < until) {
            if (runCatching { check() }.getOrDefault(false)) return
            delay(100)
        }
        fail("not true within $ms ms (logs in $dir)")
    }

    /** Waits until something listens on `port` of the loopback. */
    suspend fun awaitPort(port: Int) = eventually {
        runCatching { Socket().use { it.connect(InetSocketAddress("127.0.0.1", port), 200) } }.isSuccess
    }

    /** Stops every process, last started first. */
    fun stopAll() {
        processes.reversed().forEach { it.destroy(); it.waitFor() }
    }

    companion object {
        /** A port nothing listens on now. */
        fun freePort(): Int = ServerSocket(0).use { it.localPort }
    }
}
