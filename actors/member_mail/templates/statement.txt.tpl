Subject: {{space}}: your statement for {{month}}

Hello {{name}},

your {{space}} account for {{month}}:

% for line in lines:
    {{line['date']}}  {{line['what'].ljust(30)}} {{cad(line['cad_cents']).rjust(10)}} CAD
% end

    balance {{cad(balance_cents)}} CAD; status {{status}}, paid through {{paid_through}}.
% if opt_out:

You can turn off these statement mails: ask a member of the board.
% end
