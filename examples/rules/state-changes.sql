-- Report machine state transitions with the previous state, and push
-- faults to a webhook (the token comes from the environment).
CREATE RULE state_changes AS
SELECT deviceid() AS machine, state, lag(state, 'unknown') AS previous, timestamp() AS at
FROM 'machines/+/state'
WHERE changed(state)
DO UPLINK LANE 'events' TOPIC 'machines/state-changes',
   FILE 'state-log';

CREATE RULE faults AS
SELECT deviceid() AS machine, code, message
FROM 'machines/+/fault'
DO WEBHOOK 'https://ops.example.com/hooks/fault'
   WITH (timeout = '3s', retries = 5, HEADER 'Authorization' = 'Bearer ${env:OPS_TOKEN}');
