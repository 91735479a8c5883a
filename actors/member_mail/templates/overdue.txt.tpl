Subject: {{space}}: your dues are overdue

Hello {{name}},

your {{space}} dues were due on {{due_date}}; {{cad(balance_cents)}} CAD is outstanding.

% if address:
Pay to your dues address:

    {{address}}
    {{uri}}
% else:
You can pay at the space (cash or e-transfer).
% end

If you think this is a mistake, reply to this mail.
