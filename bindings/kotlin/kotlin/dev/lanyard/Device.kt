package dev.lanyard

/**
 * What a device built with [lanyardDevice] does with desired state,
 * commands and telemetry, as lambdas. Every part has a default: desired
 * values taken as they are, no commands of its own, no telemetry.
 */
class DeviceSpec internal constructor() {
    internal var desired: (List<String>, ShadowValue) -> DesiredOutcome = { _, _ -> DesiredOutcome.Accepted }
    internal val commands = mutableMapOf<String, (Map<String, ShadowValue>) -> CommandReply>()
    internal var telemetry: (() -> Map<String, ShadowValue>?)? = null

    /**
     * Decides what becomes of each desired property: its path (one key
     * per level) and value. An exception refuses it as unavailable.
     */
    fun onDesired(handler: (path: List<String>, value: ShadowValue) -> DesiredOutcome) {
        desired = handler
    }

    /**
     * Runs command [name]: returns its result (an empty map for none).
     * Throw [BadArgumentsException] to refuse the arguments, anything else
     * to fail it; the exception's message is the acknowledgement's detail.
     */
    fun command(name: String, handler: (args: Map<String, ShadowValue>) -> Map<String, ShadowValue>) {
        commands[name] = { args -> CommandReply.Done(handler(args)) }
    }

    /**
     * Starts command [name], which finishes later: [start] begins the work
     * (on another thread or coroutine) and returns; the command is
     * acknowledged as in progress until the work calls
     * [LanyardDevice.completeCommand] (or [LanyardDevice.failCommand]).
     * Meanwhile other commands are refused as busy. Exceptions from
     * [start] are as for [command].
     */
    fun commandLater(name: String, start: (args: Map<String, ShadowValue>) -> Unit) {
        commands[name] = { args ->
            start(args)
            CommandReply.Later
        }
    }

    /**
     * Reads the device's telemetry when it is due (the fleet's interval):
     * the readings, or `null` (or an exception) to send none this time.
     */
    fun telemetry(read: () -> Map<String, ShadowValue>?) {
        telemetry = read
    }
}

/** Thrown by a command handler: the arguments are refused, with [message] as the detail. */
class BadArgumentsException(message: String) : Exception(message)

/**
 * A device whose desired state, commands and telemetry are lambdas, run by
 * the SDK's agent over MQTT, its state kept in [stateDir]. Call
 * [LanyardDevice.run] in a coroutine; [LanyardDevice.stop] ends it.
 *
 * ```
 * val device = lanyardDevice("mqtt://127.0.0.1:1883", "02:00:00:00:00:07", "/var/lib/gateway") {
 *     onDesired { path, value ->
 *         if (path == listOf("target_c") && value is ShadowValue.Int && value.value > 30)
 *             DesiredOutcome.Reached(ShadowValue.Int(30))          // clamped, reported so
 *         else DesiredOutcome.Accepted
 *     }
 *     command("restart_service") { args -> mapOf("restarted" to ShadowValue.Bool(true)) }
 *     telemetry { mapOf("load" to ShadowValue.Float(loadAverage())) }
 * }
 * launch { device.run() }
 * ```
 */
fun lanyardDevice(
    brokerUrl: String,
    mac: String,
    stateDir: String,
    tls: TlsPaths? = null,
    firmware: String? = null,
    speed: Double = 1.0,
    build: DeviceSpec.() -> Unit,
): LanyardDevice {
    val spec = DeviceSpec().apply(build)
    return LanyardDevice(brokerUrl, mac, stateDir, LambdaApplication(spec), tls, firmware, speed)
}

/** The lambdas as the native device calls them; their exceptions become answers. */
private class LambdaApplication(private val spec: DeviceSpec) : DeviceApplication {
    override fun applyDesired(path: List<String>, value: ShadowValue): DesiredOutcome =
        try {
            spec.desired(path, value)
        } catch (e: Exception) {
            DesiredOutcome.Rejected(RejectReason.UNAVAILABLE)
        }

    override fun runCommand(name: String, args: Map<String, ShadowValue>): CommandReply {
        val handler = spec.commands[name] ?: return CommandReply.Unknown
        return try {
            handler(args)
        } catch (e: BadArgumentsException) {
            CommandReply.BadArguments(e.message ?: "bad arguments")
        } catch (e: Exception) {
            CommandReply.Failed(e.message ?: e.javaClass.simpleName)
        }
    }

    override fun readTelemetry(): Map<String, ShadowValue>? =
        try {
            spec.telemetry?.invoke()
        } catch (e: Exception) {
            null
        }
}
