// Tells the broker once at start, then every hour, which device this is and where it stands.
// kilowatch fills in the per-device values (device id, name, vars) before uploading it.
let DEVICE = "{{ device.id }}";
let NAME = "{{ device.name }}";
let SITE = "{{ vars.site }}";
let TOPIC = "{{ vars.topic }}/" + DEVICE;

function announce() {
  if (!MQTT.isConnected()) return;
  MQTT.publish(TOPIC, JSON.stringify({ device: DEVICE, name: NAME, site: SITE }), 1, true);
}

MQTT.setConnectHandler(announce);
Timer.set(3600 * 1000, true, announce);
announce();
