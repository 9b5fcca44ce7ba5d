package dev.lanyard

import kotlinx.coroutines.currentCoroutineContext
import kotlinx.coroutines.flow.Flow
import kotlinx.coroutines.flow.flow
import kotlinx.coroutines.isActive

/**
 * The events of [devices] (every device when `null`) as a cold [Flow]:
 * each collector opens a queue of its own on the app, holding at most
 * [capacity] unread events (newer ones are dropped when the collector
 * falls behind; [EventQueue.dropped] counts them), and sees what arrives
 * from then on. Cancelling the collecting coroutine ends it.
 *
 * ```
 * app.events(listOf("ly-020000000001")).first { it is AppEvent.Reported }
 * ```
 */
fun LanyardApp.events(devices: List<String>? = null, capacity: UInt = 1000u): Flow<AppEvent> =
    flow {
        val queue = openEvents(devices, capacity)
        while (currentCoroutineContext().isActive) {
            // A bounded wait, so that a cancelled collector is noticed
            // even when nothing comes.
            queue.next(1_000)?.let { emit(it) }
        }
    }
