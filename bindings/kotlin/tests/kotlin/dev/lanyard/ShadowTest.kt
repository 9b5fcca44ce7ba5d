package dev.lanyard

import kotlinx.serialization.json.Json
import kotlinx.serialization.json.JsonElement
import kotlinx.serialization.json.JsonObject
import kotlinx.serialization.json.JsonPrimitive
import kotlinx.serialization.json.buildJsonObject
import kotlinx.serialization.json.int
import kotlinx.serialization.json.jsonArray
import kotlinx.serialization.json.jsonObject
import kotlinx.serialization.json.jsonPrimitive
import kotlinx.serialization.json.long
import kotlinx.serialization.json.put
import kotlinx.serialization.json.putJsonObject
import org.junit.jupiter.api.Test
import java.io.File
import kotlin.test.assertEquals
import kotlin.test.assertFailsWith
import kotlin.test.assertTrue
import kotlin.test.fail

/**
 * [Shadow] against the cases Python's `lanyard.Shadow` runs too
 * (`bindings/shadow-cases.json`, its header says what each step means), so
 * the two bindings agree; no broker needed.
 */
class ShadowTest {
    private val defaultAt = 1700000000000uL

    private fun cases(): List<JsonObject> {
        val dir = System.getProperty("basedir") ?: "."
        val text = File(dir, "../shadow-cases.json").readText()
        return Json.parseToJsonElement(text).jsonObject["cases"]!!.jsonArray.map { it.jsonObject }
    }

    private fun policyOf(name: String) = ConflictPolicy.valueOf(name.uppercase())

    private fun nameOf(e: Enum<*>) = e.name.lowercase()

    private fun conflictJson(c: Conflict): JsonObject = buildJsonObject {
        put("path", c.path)
        put("policy", nameOf(c.policy))
        put("winner", c.winner?.let { nameOf(it) })
        put("cloud", c.cloud)
        put("device", c.device)
    }

    private fun byPath(list: List<JsonElement>) = list.sortedBy { it.jsonObject["path"]!!.jsonPrimitive.content }

    private fun expectKeys(doc: JsonObject, expected: JsonObject, where: String) {
        for ((key, value) in expected) {
            assertTrue(key in doc, "$where: no $key in $doc")
            assertEquals(value, doc[key], "$where: $key")
        }
    }

    private fun JsonObject.ulong(key: String): ULong? = this[key]?.jsonPrimitive?.long?.toULong()

    private fun JsonObject.text(key: String): String? = (this[key] as? JsonPrimitive)?.takeIf { it.isString }?.content

    private fun runStep(s: Shadow, step: JsonObject, where: String) {
        val op = step.text("op")!!
        val at = step.ulong("at") ?: defaultAt
        when (op) {
            "update", "get" -> {
                val doc = try {
                    when {
                        op == "get" -> s.get(step.text("client_token"), at)
                        "request_text" in step -> Json.parseToJsonElement(s.updateJson(step.text("request_text")!!, at)).jsonObject
                        else -> s.update(step["request"]!!.jsonObject, at)
                    }
                } catch (e: LanyardException.ShadowRejected) {
                    val rejected = step["rejected"]?.jsonObject ?: fail("$where: refused ${e.document}")
                    assertEquals(rejected["code"]!!.jsonPrimitive.int, e.code.toInt(), where)
                    assertEquals(e.code.toInt(), e.rejectedDocument["code"]!!.jsonPrimitive.int, where)
                    expectKeys(e.rejectedDocument, rejected, where)
                    return
                }
                assertTrue("rejected" !in step, "$where: accepted $doc")
                expectKeys(doc, step["accepted"]?.jsonObject ?: JsonObject(emptyMap()), where)
            }
            "update_desired", "update_reported" -> {
                val state = step["state"]!!.jsonObject
                val written = try {
                    if (op == "update_desired") s.updateDesired(state, step.ulong("if_version"), at)
                    else s.updateReported(state, step.ulong("if_version"), at)
                } catch (e: LanyardException.ShadowRejected) {
                    val rejected = step["rejected"]?.jsonObject ?: fail("$where: refused ${e.document}")
                    assertEquals(rejected["code"]!!.jsonPrimitive.int, e.code.toInt(), where)
                    return
                }
                assertTrue("rejected" !in step, where)
                step.ulong("version")?.let { assertEquals(it, written.version, where) }
                step["conflicts"]?.let { expected ->
                    assertEquals(byPath(expected.jsonArray), byPath(written.conflicts.map { conflictJson(it) }), where)
                }
            }
            "desired" -> assertEquals(step["expect"], s.desired, where)
            "reported" -> assertEquals(step["expect"], s.reported, where)
            "delta" -> assertEquals(step["expect"], s.delta, where)
            "parked" -> assertEquals(
                step["expect"]!!.jsonArray.map { it.jsonPrimitive.content },
                s.parked().map { it.path },
                where,
            )
            "resolve" -> {
                val path = step.text("path")!!
                when (step.text("error")) {
                    "not_parked" -> assertFailsWith<LanyardException.NotParked>(where) {
                        s.resolve(path, Winner.valueOf(step.text("winner")!!.uppercase()), at)
                    }
                    // A winner that is neither side cannot be named in Kotlin.
                    "bad_input" -> assertFailsWith<IllegalArgumentException>(where) {
                        Winner.valueOf(step.text("winner")!!.uppercase())
                    }
                    else -> {
                        val v = s.resolve(path, Winner.valueOf(step.text("winner")!!.uppercase()), at)
                        step.ulong("version")?.let { assertEquals(it, v, where) }
                    }
                }
            }
            "counts" -> {
                val counts = s.conflictCounts()
                for ((k, v) in step["expect"]!!.jsonObject) {
                    assertEquals(v.jsonPrimitive.long.toULong(), counts[k], "$where: $k")
                }
            }
            "policy_for" -> assertEquals(policyOf(step.text("expect")!!), s.policyFor(step.text("path")!!), where)
            else -> fail("$where: unknown step $op")
        }
    }

    @Test
    fun sharedCasesAgreeWithPython() {
        val cases = cases()
        assertTrue(cases.size >= 8)
        for (case in cases) {
            val policies = case["policies"]?.jsonObject?.mapValues { policyOf(it.value.jsonPrimitive.content) }
            val s = Shadow(
                policies,
                case.text("default_policy")?.let { policyOf(it) },
                case.ulong("skew_tolerance_ms") ?: 1000uL,
            )
            case["steps"]!!.jsonArray.forEachIndexed { i, step ->
                val name = case.text("name")
                runStep(s, step.jsonObject, "$name, step $i (${step.jsonObject.text("op")})")
            }
        }
    }

    @Test
    fun defaultsAndBadInput() {
        val s = Shadow()
        assertEquals(0uL, s.version())
        val e = assertFailsWith<LanyardException.ShadowRejected> { s.get() }
        assertEquals(404, e.code.toInt())
        val doc = s.update(buildJsonObject { putJsonObject("state") { putJsonObject("desired") { put("color", "red") } } })
        assertEquals(1, doc["version"]!!.jsonPrimitive.int)
        // The clock's time, in seconds, when none is given.
        assertTrue(doc["timestamp"]!!.jsonPrimitive.long > 1_700_000_000L)
        assertFailsWith<LanyardException.BadInput> { s.updateDesiredJson("[1, 2]", null, null) }
        assertFailsWith<LanyardException.BadInput> { Shadow(mapOf("a..b" to ConflictPolicy.DEVICE_WINS), null, 1000uL) }
        assertFailsWith<LanyardException.BadInput> { s.policyFor("") }
        // Nothing refused changed the document.
        assertEquals(1uL, s.version())
        assertEquals(Json.parseToJsonElement("{\"color\":\"red\"}"), s.delta)
    }
}
