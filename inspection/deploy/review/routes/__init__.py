"""The review station's routes, one router per area: auth, queue, parts, stats, admin."""
