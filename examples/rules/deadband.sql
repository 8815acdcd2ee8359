-- Forward a temperature only when it moved by 0.5 or more since the last
-- forwarded value of that device: cuts uplink traffic for slow signals.
CREATE RULE temp_deadband AS
SELECT deviceid() AS device, temp, timestamp() AS ts
FROM 'sensors/+/temp'
WHERE deadband(temp, 0.5)
DO UPLINK LANE 'telemetry' TOPIC 'telemetry/temp/${device}';
