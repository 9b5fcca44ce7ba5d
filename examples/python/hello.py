"""Against `lanyard demo --minutes 60`: pass the broker URL it prints."""
import sys
import lanyard

app = lanyard.App(sys.argv[1], operator="lanyard-operator")
device, greeting = "ly-020000000000", "hello from Python"
events = app.events([device])
print("desired at version", app.set_desired(device, {"greeting": greeting}))
while (e := events.next(timeout=10)) and not (e["type"] == "reported" and e["state"].get("greeting") == greeting):
    pass
print("reported:", e)
print("the shadow holds:", app.get_shadow(device)["reported"]["greeting"])
