package example

import dev.lanyard.*
import kotlinx.coroutines.CoroutineStart.UNDISPATCHED
import kotlinx.coroutines.async
import kotlinx.coroutines.flow.first
import kotlinx.coroutines.runBlocking

// Against `lanyard demo --minutes 60`: pass the broker URL it prints.
fun main(args: Array<String>) = runBlocking {
    val app = connectAppUrl(args[0]).apply { asOperator("lanyard-operator") }
    val device = "ly-020000000000"
    val greeting = ShadowValue.Text("hello from Kotlin")
    val reported = async(start = UNDISPATCHED) {
        app.events(listOf(device)).first { it is AppEvent.Reported && it.state["greeting"] == greeting }
    }
    println("desired at version " + app.setDesired(device, mapOf("greeting" to greeting)))
    println("reported: ${reported.await()}")
    println("the shadow holds: ${app.getShadow(device, 5_000).reported["greeting"]}")
    app.close()
}
