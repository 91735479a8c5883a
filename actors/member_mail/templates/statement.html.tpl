% rebase('layout.html.tpl', title='Statement ' + month)
<p>Hello {{name}},</p>
<p>your {{space}} account for {{month}}:</p>
<table>
% for line in lines:
<tr><td>{{line['date']}}</td><td>{{line['what']}}</td><td style="text-align: right">{{cad(line['cad_cents'])}} CAD</td></tr>
% end
</table>
<p>Balance <b>{{cad(balance_cents)}} CAD</b>; status {{status}}, paid through {{paid_through}}.</p>
