package dev.lanyard

import kotlinx.serialization.json.Json
import kotlinx.serialization.json.JsonElement
import kotlinx.serialization.json.JsonObject
import kotlinx.serialization.json.jsonObject

// Kotlin's view of [Shadow]: the documents as kotlinx.serialization
// objects, over the JSON text the native engine takes and gives.

private fun objectOf(text: String): JsonObject = Json.parseToJsonElement(text).jsonObject

/**
 * Applies an AWS IoT shadow update request and returns what AWS IoT
 * publishes on `/update/accepted`; refused, throws
 * [LanyardException.ShadowRejected] with AWS IoT's code, reason and
 * `/update/rejected` document, and nothing changes.
 *
 * ```
 * val shadow = Shadow()
 * val request = buildJsonObject {
 *     putJsonObject("state") { putJsonObject("desired") { put("color", "red") } }
 * }
 * shadow.update(request)["version"]   // 1
 * ```
 */
fun Shadow.update(request: JsonObject, nowMs: ULong? = null): JsonObject =
    objectOf(updateJson(request.toString(), nowMs))

/**
 * What AWS IoT publishes on `/get/accepted`: state (desired, reported,
 * delta), metadata, version, timestamp. Before the first write, throws
 * [LanyardException.ShadowRejected] with code 404.
 */
fun Shadow.get(clientToken: String? = null, nowMs: ULong? = null): JsonObject =
    objectOf(getJson(clientToken, nowMs))

/** Writes desired state (nulls delete), as the cloud; with [ifVersion], only if it is the document's. */
fun Shadow.updateDesired(state: JsonObject, ifVersion: ULong? = null, nowMs: ULong? = null): Written =
    updateDesiredJson(state.toString(), ifVersion, nowMs)

/** Writes reported state, as the device. See [updateDesired]. */
fun Shadow.updateReported(state: JsonObject, ifVersion: ULong? = null, nowMs: ULong? = null): Written =
    updateReportedJson(state.toString(), ifVersion, nowMs)

/** Desired state. */
val Shadow.desired: JsonObject get() = objectOf(desiredJson())

/** Reported state. */
val Shadow.reported: JsonObject get() = objectOf(reportedJson())

/** The desired properties whose reported value differs or is missing, less the parked conflicts. */
val Shadow.delta: JsonObject get() = objectOf(deltaJson())

/** The cloud's value of a conflict. */
val Conflict.cloud: JsonElement get() = Json.parseToJsonElement(cloudJson)

/** The device's value of a conflict. */
val Conflict.device: JsonElement get() = Json.parseToJsonElement(deviceJson)

/** The `/rejected` document of a refused shadow update or read. */
val LanyardException.ShadowRejected.rejectedDocument: JsonObject get() = objectOf(document)
