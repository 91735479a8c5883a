% rebase('layout.html.tpl', title='Test mail')
<p>This is a test mail from {{space}}'s member mail (<code>dctrl mail send-test</code>).</p>
<p>If you can read it, mail from {{space}} reaches you.</p>
