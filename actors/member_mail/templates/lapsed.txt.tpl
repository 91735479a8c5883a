Subject: {{space}}: your membership has lapsed

Hello {{name}},

your {{space}} membership lapsed on {{since}}: your dues were not paid within the grace period.

% if address:
A payment to your dues address reinstates it:

    {{address}}
% else:
A payment at the space (cash or e-transfer) reinstates it.
% end

We hope to see you back.
