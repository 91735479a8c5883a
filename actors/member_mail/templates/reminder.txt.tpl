Subject: {{space}}: your dues are due in {{days}} day{{'' if days == 1 else 's'}}

Hello {{name}},

your {{space}} dues of {{cad(dues_cents)}} CAD are due on {{due_date}}, in {{days}} day{{'' if days == 1 else 's'}}.

% if address:
Pay to your dues address:

    {{address}}
    {{uri}}
% else:
You can pay at the space (cash or e-transfer).
% end
% if opt_out:

You can turn off these reminder mails: ask a member of the board.
% end
